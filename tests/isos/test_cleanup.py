"""The janitor that cleans up after killed workers."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_create_download, temp_path

pytestmark = pytest.mark.django_db


def test_stalled_download_is_failed_and_orphans_removed(iso_dirs):
    live = iso_create_download(url="http://127.0.0.1:9/live.iso", meta=IsoMetadata())
    stalled = iso_create_download(url="http://127.0.0.1:9/stalled.iso", meta=IsoMetadata())
    IsoImage.objects.filter(pk=stalled.pk).update(updated_at=timezone.now() - timedelta(hours=2))
    live_part = temp_path(live)
    live_part.write_bytes(b"in flight")
    stalled_part = temp_path(stalled)
    stalled_part.write_bytes(b"left behind")
    orphan = iso_dirs.download / ".gone.iso.iso-0123456789ab.part"
    orphan.write_bytes(b"x")
    keep = iso_dirs.download / "someone.iso"
    keep.write_bytes(b"y")

    out = StringIO()
    call_command("cleanup_downloads", "--dry-run", stdout=out)
    assert "would fail 1 stalled ISO(s), would remove 2 partial file(s)" in out.getvalue()
    assert orphan.exists()

    call_command("cleanup_downloads", stdout=StringIO())
    stalled.refresh_from_db()
    assert stalled.status == "failed" and "the worker stopped" in stalled.error
    assert IsoImage.objects.get(pk=live.pk).status == "downloading"
    assert live_part.exists() and keep.exists()
    assert not orphan.exists() and not stalled_part.exists()


def test_the_janitor_is_scheduled_by_the_migrations():
    schedule = Schedule.objects.get(func="isos.tasks.cleanup_downloads")
    assert schedule.schedule_type == Schedule.HOURLY
