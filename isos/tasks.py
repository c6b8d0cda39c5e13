"""django-q2 entry points. Thin: they take an id and call the job.

Parameter names avoid django-q2's reserved keywords (hook, group, timeout, ...).
"""

from __future__ import annotations

from isos import jobs


def download_iso(iso_id: str) -> None:
    jobs.iso_run_download(iso_id=iso_id)


def hash_iso(iso_id: str) -> None:
    jobs.iso_run_hash(iso_id=iso_id)


def cleanup_downloads() -> str:
    """Hourly janitor (schedule created by migration isos.0002)."""
    from datetime import timedelta

    from isos.services import iso_cleanup

    stale, orphans = iso_cleanup(stale_after=timedelta(minutes=30))
    return f"failed {len(stale)} stalled, removed {len(orphans)} partial file(s)"


def scan_iso_dirs() -> str:
    """Register what appeared in the ISO directories (schedule created by migration isos.0006)."""
    from isos.services import iso_scan_dirs

    return iso_scan_dirs().summary()
