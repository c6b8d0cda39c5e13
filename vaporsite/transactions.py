"""Transactions for services that offer a dry run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction


@contextmanager
def atomic_or_dry_run(*, dry_run: bool) -> Iterator[None]:
    """A transaction, rolled back at the end of the block when `dry_run`.

    A dry run does the very work of a real run, so what it reports is what a
    real run would do; afterwards nothing it wrote remains, nor anything it
    queued with `transaction.on_commit`. An exception rolls back either way.
    """
    with transaction.atomic():
        yield
        if dry_run:
            transaction.set_rollback(True)
