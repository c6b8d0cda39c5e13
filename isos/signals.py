"""Signals the ISO library sends to the apps above it (which it may not import).

`iso_deleted` is sent once an ISO's deletion is committed, with `iso_id`: the
VM app removes the copies it made of it on other hosts
(`vms.services.iso_copies`). A receiver may return a list of notes (what it
could not do yet); `iso_delete` hands them to its caller.
"""

from __future__ import annotations

from django.dispatch import Signal

iso_deleted = Signal()
