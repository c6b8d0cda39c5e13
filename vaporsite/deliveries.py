"""Counting the deliveries of a background task that started.

django-q2 counts a delivery only when it finishes, so a worker killed in the
middle (OOM, SIGKILL) would get the task again for ever. Vapor counts the
deliveries that started itself, in the `attempts` column of the row the task
works on, and gives up after TASK_MAX_ATTEMPTS of them (django-q2's own
max_attempts).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import F, QuerySet


def max_attempts() -> int:
    """How many deliveries of a task may start: django-q2's max_attempts."""
    return int(settings.TASK_MAX_ATTEMPTS)


def start_delivery(rows: QuerySet[Any], **fields: Any) -> bool:
    """Count a started delivery on the row `rows` selects, setting `fields` in the same UPDATE.

    False when no row matched: nothing is left to do, or (when `rows` filters
    on a claim) another delivery is running the task.
    """
    return bool(rows.update(attempts=F("attempts") + 1, **fields))


def give_up_reason(attempts: int, what: str) -> str:
    """Why a delivery must give up ("" while it may run): more than max_attempts started."""
    if attempts <= max_attempts():
        return ""
    return f"{what} started {attempts - 1} times and never finished (the worker stopped each time); giving up"
