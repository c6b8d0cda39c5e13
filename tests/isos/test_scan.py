"""The ISO directories watched (issue 13, point 5): `iso_scan_dirs`, its schedule, and "Scan now" in the ISO list."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django_q.models import Schedule

from isos import tasks
from isos.hashing import hash_file
from isos.models import IsoImage
from isos.services import iso_scan_dirs
from tests.support.isos import make_iso, make_non_iso

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/isos/isoimage/"
SCAN = "/admin/isos/isoimage/scan/"


def settled(path: Path, age: float = 600) -> Path:
    """As a file moved in with `mv` or `cp -p`: last modified `age` seconds ago."""
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def iso_file(directory: Path, name: str, **kwargs: object) -> Path:
    return settled(make_iso(directory / name, **kwargs))  # type: ignore[arg-type]


def scan_and_hash(run_tasks):
    with run_tasks():
        report = iso_scan_dirs()
    return report


def test_new_isos_in_the_directories_are_registered_and_hashed(iso_dirs, run_tasks):
    first = iso_file(iso_dirs.search[0], "debian.iso", label="Debian 12.5.0 amd64 n", boot="hybrid")
    second = iso_file(iso_dirs.search[2], "tools.img", label="TOOLS")

    report = scan_and_hash(run_tasks)

    assert report.registered == [str(first), str(second)]
    assert (report.unchanged, report.changed, report.skipped, report.errors) == ([], [], [], [])
    assert report.directories == 3 and report.summary().startswith("2 file(s) in 3 ISO directories: registered 2")
    debian = IsoImage.objects.get(name="debian.iso")
    data = first.read_bytes()
    assert (debian.status, debian.sha256_hash, debian.md5_hash) == (
        "ready",
        hashlib.sha256(data).hexdigest(),
        hashlib.md5(data).hexdigest(),
    )
    assert (debian.boot_type, debian.downloaded, debian.size) == ("hybrid", False, len(data))
    assert debian.file_mtime_ns == first.stat().st_mtime_ns


def test_an_unchanged_file_is_not_read_again(iso_dirs, run_tasks):
    path = iso_file(iso_dirs.search[0], "debian.iso")
    scan_and_hash(run_tasks)
    before = IsoImage.objects.get()

    reads = mock.Mock(side_effect=AssertionError("the file was read"))
    with (
        mock.patch("isos.jobs.hash_file", reads),
        mock.patch("isos.services.is_iso_image", reads),
        mock.patch("isos.services.inspect_iso", reads),
        run_tasks(),
    ):
        report = iso_scan_dirs()

    assert report.unchanged == [str(path)] and report.registered == report.changed == []
    reads.assert_not_called()
    after = IsoImage.objects.get()
    assert (after.status, after.sha256_hash, after.updated_at) == ("ready", before.sha256_hash, before.updated_at)


def test_a_changed_file_is_hashed_again_and_reported(iso_dirs, run_tasks):
    path = iso_file(iso_dirs.search[0], "debian.iso", label="OLD")
    scan_and_hash(run_tasks)
    old = IsoImage.objects.get()
    make_iso(path, label="NEW", size_padding=4096)  # replaced in place, and larger
    settled(path, age=120)

    with run_tasks():
        report = iso_scan_dirs()
        assert IsoImage.objects.get().status == "hashing"  # until the task runs

    assert report.registered == [] and len(report.changed) == 1
    changed_path, why = report.changed[0]
    assert changed_path == str(path) and f"{old.pk} changed on disk (size {old.size} -> {path.stat().st_size} bytes)" in why
    new = IsoImage.objects.get()
    assert new.pk == old.pk and new.status == "ready"
    assert new.sha256_hash == hashlib.sha256(path.read_bytes()).hexdigest() != old.sha256_hash
    assert (new.size, new.file_mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)
    assert iso_scan_dirs().unchanged == [str(path)]  # and from now on left alone


def test_a_touched_file_of_the_same_size_is_hashed_again(iso_dirs, run_tasks):
    path = iso_file(iso_dirs.search[0], "debian.iso")
    scan_and_hash(run_tasks)
    settled(path, age=60)
    with mock.patch("isos.jobs.hash_file", wraps=hash_file) as hashed, run_tasks():
        report = iso_scan_dirs()
    assert [why for _, why in report.changed] == [
        f"{IsoImage.objects.get().pk} changed on disk (modified since it was hashed): hashing it again"
    ]
    assert hashed.call_count == 1


def test_refused_files_are_not_registered_and_each_says_why(iso_dirs, run_tasks):
    top = iso_dirs.search[0]
    iso_file(top, ".debian.iso.iso-0123456789ab.part")  # a download in progress
    settled(make_iso(top / "ubuntu.iso.part"))
    iso_file(top, ".hidden.iso")
    settled(make_non_iso(top / "SHA256SUMS", b"abc  debian.iso\n"))
    settled(make_non_iso(top / "fake.iso", b"\0" * 40000))
    make_iso(top / "copying.iso")  # modified just now: may still be being written
    outside = iso_file(iso_dirs.outside, "secret.iso")
    (top / "escape.iso").symlink_to(outside)  # a symlink leading out of the allowed directories
    (top / "dangling.iso").symlink_to(top / "gone.iso")
    (top / "subdir").mkdir()
    iso_file(top / "subdir", "nested.iso")  # top level only

    report = scan_and_hash(run_tasks)

    assert not IsoImage.objects.exists()
    assert report.registered == report.unchanged == report.changed == []
    skipped = dict(report.skipped)
    assert skipped[str(top / ".debian.iso.iso-0123456789ab.part")] == "a partial download or hidden file"
    assert skipped[str(top / "ubuntu.iso.part")] == skipped[str(top / ".hidden.iso")] == "a partial download or hidden file"
    assert skipped[str(top / "SHA256SUMS")] == skipped[str(top / "fake.iso")] == "not an ISO 9660 or UDF image"
    assert "may still be being written" in skipped[str(top / "copying.iso")]
    errors = dict(report.errors)
    assert set(errors) == {str(top / "escape.iso"), str(top / "dangling.iso")}
    assert "outside the allowed directories" in errors[str(top / "escape.iso")]
    assert "does not exist" in errors[str(top / "dangling.iso")]
    # Once the copy has settled, the next scan takes it.
    settled(top / "copying.iso")
    assert scan_and_hash(run_tasks).registered == [str(top / "copying.iso")]


def test_a_symlink_inside_the_directories_counts_once_and_a_name_clash_is_an_error(iso_dirs, run_tasks):
    real = iso_file(iso_dirs.search[0], "debian.iso")
    (iso_dirs.search[0] / "latest.iso").symlink_to(real)
    clash = iso_file(iso_dirs.search[1], "debian.iso")  # another file, the same name

    report = scan_and_hash(run_tasks)

    assert report.registered == [str(real)]
    assert report.errors == [(str(clash), f"an ISO named 'debian.iso' is already registered ({IsoImage.objects.get().pk})")]


def test_rows_from_before_mtimes_were_kept_get_one_without_a_read(iso_dirs, run_tasks):
    path = iso_file(iso_dirs.search[0], "debian.iso")
    scan_and_hash(run_tasks)
    IsoImage.objects.update(file_mtime_ns=None)
    with mock.patch("isos.jobs.hash_file", side_effect=AssertionError("read")), run_tasks():
        assert iso_scan_dirs().unchanged == [str(path)]
    assert IsoImage.objects.get().file_mtime_ns == path.stat().st_mtime_ns


def test_a_busy_row_is_left_alone(iso_dirs, run_tasks):
    path = iso_file(iso_dirs.search[0], "debian.iso")
    iso_scan_dirs()  # registered, hashing: the task was not run
    make_iso(path, size_padding=2048)
    settled(path)
    report = iso_scan_dirs()
    assert report.skipped == [(str(path), f"already registered as {IsoImage.objects.get().pk}, hashing now")]


def test_missing_directories_are_passed_over(iso_dirs, tmp_path):
    report = iso_scan_dirs(dirs=[tmp_path / "nowhere", iso_dirs.search[0]])
    assert (report.directories, report.found, report.errors) == (1, 0, [])


def test_the_schedule_scans_every_five_minutes(iso_dirs, run_tasks):
    schedule = Schedule.objects.get(func="isos.tasks.scan_iso_dirs")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 5, -1)
    iso_file(iso_dirs.search[0], "debian.iso")
    with run_tasks():
        summary = tasks.scan_iso_dirs()
    assert summary == "1 file(s) in 3 ISO directories: registered 1, unchanged 0, changed 0, skipped 0, errors 0"


# --- "Scan now" in the ISO list --------------------------------------------------------------------


def staff(*codenames: str) -> Client:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post_with_csrf(client: Client, url: str):
    page = client.get(CHANGELIST)
    token = page.cookies["csrftoken"].value if "csrftoken" in page.cookies else client.cookies["csrftoken"].value
    return client.post(url, {"csrfmiddlewaretoken": token}, follow=True)


def test_scan_now_registers_and_says_what_it_found(iso_dirs, run_tasks):
    client = staff("view_isoimage", "add_isoimage")
    page = client.get(CHANGELIST).content.decode()
    assert 'id="vapor-scan-now"' in page and 'action="/admin/isos/isoimage/scan/"' in page
    assert str(iso_dirs.search[0]) in page  # the help names the directories
    top = iso_dirs.search[0]
    new = iso_file(top, "debian.iso")
    settled(make_non_iso(top / "notes.txt"))
    (top / "escape.iso").symlink_to(iso_file(iso_dirs.outside, "x.iso"))

    with run_tasks():
        response = post_with_csrf(client, SCAN)

    assert response.redirect_chain == [(CHANGELIST, 302)]
    texts = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert texts[0] == ("warning", "Scanned 3 file(s) in 3 ISO directories: registered 1, unchanged 0, changed 0, skipped 1, errors 1.")
    assert ("success", f"Registered {new} (hashing in the background)") in texts
    assert ("info", f"Skipped {top / 'notes.txt'}: not an ISO 9660 or UDF image") in texts
    assert any(level == "error" and text.startswith(f"Refused {top / 'escape.iso'}: ") for level, text in texts)
    assert IsoImage.objects.get().name == "debian.iso"
    assert "debian.iso" in response.content.decode()


def test_scan_now_needs_the_add_permission_a_post_and_the_csrf_token(iso_dirs):
    iso_file(iso_dirs.search[0], "debian.iso")
    viewer = staff("view_isoimage")
    assert 'id="vapor-scan-now"' not in viewer.get(CHANGELIST).content.decode()
    assert post_with_csrf(viewer, SCAN).status_code == 403

    adder = Client(enforce_csrf_checks=True)
    adder.force_login(User.objects.create_user("adder", is_staff=True))
    User.objects.get(username="adder").user_permissions.set(Permission.objects.filter(codename__in=["view_isoimage", "add_isoimage"]))
    assert adder.get(SCAN).status_code == 405
    assert adder.post(SCAN).status_code == 403  # no CSRF token
    assert not IsoImage.objects.exists()
