"""Database-sensitive behaviour, run against PostgreSQL by the test command."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection

from isos.hashing import hash_file
from isos.models import IsoImage
from isos.services import IsoMetadata, iso_record_use, iso_register_path
from tests.support.isos import make_iso, register_ready
from tests.support.threads import in_threads
from vaporsite.errors import Conflict

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_the_suite_really_runs_on_postgresql() -> None:
    assert connection.vendor == "postgresql"


def test_concurrent_record_use_loses_no_increment(iso_dirs) -> None:
    path: Path = make_iso(iso_dirs.search[0] / "a.iso")
    iso = register_ready(path)

    def use(_: int) -> None:
        for _round in range(10):
            iso_record_use(iso=IsoImage.objects.get(pk=iso.pk))

    assert in_threads(16, use) == []
    iso.refresh_from_db()
    assert iso.use_count == 160
    assert iso.last_used is not None


def test_concurrent_registration_of_one_path_makes_one_row(iso_dirs) -> None:
    path = make_iso(iso_dirs.search[0] / "a.iso")

    def register(index: int) -> None:
        iso_register_path(path=str(path), meta=IsoMetadata(name=f"n{index}"), digests=hash_file(path))

    errors = in_threads(8, register)
    assert IsoImage.objects.count() == 1
    assert len(errors) == 7 and all(isinstance(e, Conflict) for e in errors), errors
