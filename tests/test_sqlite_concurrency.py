"""The embedded SQLite database holds up when the web process and the worker write at once.

Connections are opened with the database settings `vaporsite.env` produces,
on a temporary file (not the test database), so a change to those settings
shows here.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.db.utils import ConnectionHandler

from vaporsite import env


@pytest.fixture
def handler(tmp_path: Path, django_db_blocker: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = env.load({"DATABASE_URL": f"sqlite:///{tmp_path / 'vapor.sqlite3'}"})
    handler = ConnectionHandler({"default": config.database})
    # transaction.atomic() finds its connection in django.db.connections:
    # point it at this handler's (each thread has its own, as in Django).
    monkeypatch.setattr(transaction, "get_connection", lambda using=None: handler["default"])
    with django_db_blocker.unblock():
        yield handler
        handler.close_all()


def _pragma(connection: Any, name: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


def test_a_new_connection_is_in_wal_mode_and_waits_for_the_lock(handler: Any) -> None:
    connection = handler["default"]
    assert _pragma(connection, "journal_mode") == "wal"
    assert _pragma(connection, "busy_timeout") == 30_000
    assert _pragma(connection, "synchronous") == 1  # NORMAL


def test_a_second_writer_waits_for_the_first_instead_of_failing(handler: Any) -> None:
    """Each writer reads, then writes, in one transaction: the shape of most service calls.

    With SQLite's default deferred transactions the second one would fail
    with "database is locked" as soon as the first commits, whatever the
    busy timeout, because its read snapshot is stale by then.
    """
    with handler["default"].cursor() as cursor:
        cursor.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        cursor.execute("INSERT INTO counter VALUES (0)")
    handler["default"].close()

    first_writes = threading.Event()
    errors: list[BaseException] = []

    def increment(hold: float, before: threading.Event | None) -> None:
        connection = handler["default"]
        try:
            if before is not None:
                before.wait(5)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT n FROM counter")
                (n,) = cursor.fetchone()
                if before is None:
                    first_writes.set()
                time.sleep(hold)
                cursor.execute("UPDATE counter SET n = %s", [n + 1])
                time.sleep(hold)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    def run(hold: float, before: threading.Event | None) -> threading.Thread:
        thread = threading.Thread(target=increment, args=(hold, before))
        thread.start()
        return thread

    threads = [run(0.3, None), run(0.0, first_writes)]
    for thread in threads:
        thread.join(30)
    assert errors == []
    with handler["default"].cursor() as cursor:
        cursor.execute("SELECT n FROM counter")
        assert cursor.fetchone()[0] == 2
