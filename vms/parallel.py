"""Asking several hosts at once (issue 15): one kept pool of worker threads per process.

Placement and the create page's lists ask every candidate host the same
questions; asked one after the other, a slow host would delay the rest, and
threads started per request cost more than the questions themselves. A host
that hangs holds a worker only until its connection's own bounds end
(VAPOR_HOST_CONNECT_TIMEOUT to open, keepalive once open); the caller never
waits longer than `timeout`.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from django.conf import settings

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 16
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _workers() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vapor-hosts")
        return _pool


def answer_timeout() -> float:
    """How long a caller waits for all the hosts: a connection's opening bound plus a second for the questions."""
    return settings.VAPOR.host_connect_timeout + 1.0


def ask_each(ask: Callable[[T], R], items: Sequence[T], *, timeout: float | None = None) -> list[R | None]:
    """`ask(item)` for every item in parallel, in the items' order; None for one that did not answer within
    `timeout` (default `answer_timeout()`), which is not waited for. `ask` must not touch the database."""
    pool = _workers()
    futures = [pool.submit(ask, item) for item in items]
    done, _ = concurrent.futures.wait(futures, timeout=answer_timeout() if timeout is None else timeout)
    answers: list[R | None] = []
    for future in futures:
        if future in done:
            answers.append(future.result())
        else:
            future.cancel()
            answers.append(None)
    return answers
