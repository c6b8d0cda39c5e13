"""The `register_isos` management command on a directory of real ISOs."""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from isos.models import IsoImage
from tests.support.isos import make_iso, make_non_iso

pytestmark = pytest.mark.django_db


@pytest.fixture
def library(iso_dirs):
    top = iso_dirs.extra_root
    (top / "linux").mkdir()
    (top / "linux" / "deep").mkdir()
    make_iso(top / "a.iso", label="Ubuntu-Server 22.04 LTS amd64", boot="hybrid")
    make_iso(top / "b.img", label="DATA")  # an ISO whatever its extension
    make_iso(top / "linux" / "c.iso", label="Fedora-S-dvd-x86_64-36", boot="uefi")
    make_iso(top / "linux" / "deep" / "d.iso", boot="bios")
    make_non_iso(top / "README.txt", b"not an image")
    make_non_iso(top / "fake.iso", b"\0" * 40000)
    return top


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("register_isos", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_registers_the_isos_of_a_directory_and_is_idempotent(library):
    out, _ = run(str(library), "--tag", "imported", "--jobs", "2")
    assert "registered 2, skipped 0 (already registered), failed 0" in out
    assert sorted(IsoImage.objects.values_list("name", flat=True)) == ["a.iso", "b.img"]
    a = IsoImage.objects.get(name="a.iso")
    data = (library / "a.iso").read_bytes()
    assert (a.status, a.sha256_hash, a.md5_hash) == ("ready", hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    assert (a.os_variant, a.boot_type, [t.name for t in a.tags.all()]) == ("ubuntu22.04", "hybrid", ["imported"])

    out, _ = run(str(library), "--recursive")
    assert "registered 2, skipped 2 (already registered), failed 0" in out
    assert IsoImage.objects.count() == 4
    out, _ = run(str(library), "--recursive")
    assert "registered 0, skipped 4 (already registered), failed 0" in out


def test_dry_run_writes_nothing(library):
    out, _ = run(str(library), "--recursive", "--dry-run")
    assert "would register 4, skipped 0" in out
    assert str(library / "linux" / "deep" / "d.iso") in out
    assert not IsoImage.objects.exists()


def test_failures_are_listed_and_make_the_exit_code_non_zero(library, iso_dirs):
    outside = make_iso(iso_dirs.outside / "x.iso")
    err = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("register_isos", str(library / "a.iso"), str(library / "fake.iso"), str(outside), stdout=StringIO(), stderr=err)
    assert caught.value.returncode == 1
    assert f"failed {library / 'fake.iso'}: not an ISO 9660 or UDF image" in err.getvalue()
    assert f"failed {outside}: " in err.getvalue() and "outside the allowed directories" in err.getvalue()
    assert list(IsoImage.objects.values_list("name", flat=True)) == ["a.iso"]


def test_a_name_clash_is_a_failure_not_a_crash(library, iso_dirs):
    make_iso(iso_dirs.search[0] / "a.iso")
    run(str(iso_dirs.search[0]))
    with pytest.raises(CommandError):
        run(str(library))
    assert IsoImage.objects.filter(name="b.img").exists()
