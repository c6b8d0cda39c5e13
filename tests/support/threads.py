"""Racing calls against each other, for the concurrency tests on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connections


def in_threads(count: int, work: Callable[[int], object]) -> list[BaseException]:
    """Run `work(index)` in `count` threads released at once; return their exceptions.

    Each thread closes its database connections when done: a connection left
    open would keep the test database from being dropped.
    """
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
