"""The task of the scale-out test (tests/test_scaleout_pg.py), run by real `qcluster` processes.

Each execution inserts one row: which key, which cluster (SCALEOUT_NODE, set
by the test per `qcluster`) and which process. Nothing is unique, so a task
that runs twice leaves two rows with its key, which the test counts.
"""

from __future__ import annotations

import os
import time

TABLE = "scaleout_run"
CREATE_TABLE = f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, key text NOT NULL, node text NOT NULL, pid integer NOT NULL)"


def record(key: str, seconds: float = 0.0) -> str:
    from django.db import connection

    time.sleep(seconds)  # long enough that one cluster cannot drain the queue before the other starts pulling
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (key, node, pid) VALUES (%s, %s, %s)",
            [key, os.environ.get("SCALEOUT_NODE", "?"), os.getpid()],
        )
    return key
