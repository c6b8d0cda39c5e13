"""Hostile host paths offered wherever the API takes one: an existing disk (`disks.N.path`),
a clone source (`disks.N.clone_from`), an ISO registered by `path`, and `iso_path` in
create-enhanced.

Each must be refused with a 4xx naming the field, and leave nothing behind: no VM, disk or
ISO row, no new or changed file in any root, pool or the download directory, no volume, no
domain, no writing call on the hypervisor. A fixed list of known tricks, then Hypothesis.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.hostile import ISO_URL, Ground, error_field, vm_payload
from tests.support.api import CREATE_URL
from tests.support.images import make_image
from tests.support.isos import make_iso
from tests.vms import conftest as vm_fixtures

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "hostile paths"
hv = vm_fixtures.hv
disk_root = vm_fixtures.disk_root


@dataclass(frozen=True)
class Field:
    """Where a path goes in a request, and the field name the refusal must carry."""

    name: str  # as reported in the error's "field"
    disk: bool  # True: checked against the disk roots, False: against the ISO roots

    def send(self, client: Any, value: str) -> Any:
        if self.name == "disks.0.path":
            return client.post(CREATE_URL, vm_payload(disks=[{"path": value}]), format="json")
        if self.name == "disks.0.clone_from":
            return client.post(CREATE_URL, vm_payload(disks=[{"clone_from": value}]), format="json")
        if self.name == "path":
            return client.post(ISO_URL, {"path": value}, format="json")
        return client.post(CREATE_URL, vm_payload(disks=[{"size": 1}], iso_path=value), format="json")


FIELDS = [Field("disks.0.path", True), Field("disks.0.clone_from", True), Field("path", False), Field("iso_path", False)]


@dataclass
class Place:
    """The roots of this test and valid files just outside them."""

    ground: Ground
    disk_root: Path
    iso_root: Path
    outside: Path
    outside_image: Path  # a valid qcow2 outside the disk roots
    outside_iso: Path  # a valid ISO outside the ISO roots
    disk_sibling: Path  # <disk root>2: shares the root's name as a prefix
    iso_sibling: Path


@pytest.fixture
def place(hv, disk_root, iso_dirs, tmp_path: Path) -> Place:
    outside = tmp_path / "elsewhere-hostile"
    outside.mkdir()
    disk_sibling = Path(f"{disk_root}2")
    iso_sibling = Path(f"{iso_dirs.extra_root}2")
    for directory in (disk_sibling, iso_sibling):
        directory.mkdir()
    make_image(disk_sibling / "sibling.qcow2")
    make_iso(iso_sibling / "sibling.iso")
    ground = Ground(hv, [disk_root, hv.pool_dir, *iso_dirs.search, iso_dirs.download, iso_dirs.extra_root, outside])
    ground.directories += [disk_sibling, iso_sibling]
    return Place(
        ground=ground,
        disk_root=disk_root,
        iso_root=iso_dirs.extra_root,
        outside=outside,
        outside_image=make_image(outside / "outside.qcow2"),
        outside_iso=make_iso(outside / "outside.iso"),
        disk_sibling=disk_sibling,
        iso_sibling=iso_sibling,
    )


def fixed_cases(place: Place, disk: bool) -> list[tuple[str, str]]:
    """(what, path) for one kind of root; symlinks are made here, inside that root."""
    root = place.disk_root if disk else place.iso_root
    target = place.outside_image if disk else place.outside_iso
    sibling = (place.disk_sibling / "sibling.qcow2") if disk else (place.iso_sibling / "sibling.iso")
    links = root / "links"
    links.mkdir(exist_ok=True)
    for name, points_to in (("to-outside", target), ("to-passwd", Path("/etc/passwd")), ("to-outside-dir", place.outside)):
        if not (links / name).is_symlink():
            (links / name).symlink_to(points_to)
    up = "/".join([".."] * len(root.parts))
    return [
        ("/etc/shadow", "/etc/shadow"),
        ("/etc/passwd", "/etc/passwd"),
        ("/dev/sda", "/dev/sda"),
        ("/dev/zero (a device)", "/dev/zero"),
        ("/proc/self/environ", "/proc/self/environ"),
        ("../ escape to a valid file outside", f"{root}/../{place.outside.name}/{target.name}"),
        ("../ escape to /etc/passwd", f"{root}/{up}/etc/passwd"),
        ("symlink in the root to a valid file outside", str(links / "to-outside")),
        ("symlink in the root to /etc/passwd", str(links / "to-passwd")),
        ("path through a symlinked directory", str(links / "to-outside-dir" / target.name)),
        ("sibling directory sharing the root's prefix", str(sibling)),
        ("the root directory itself", str(root)),
        ("json: protocol", 'json:{"file":{"driver":"file","filename":"/etc/passwd"}}'),
        ("json: protocol naming a root file", 'json:{"file.filename":"' + str(root / "x") + '"}'),
        ("nbd: protocol", "nbd:127.0.0.1:1"),
        ("nbd:// URL", "nbd://127.0.0.1:10809/export"),
        ("file: protocol", "file:/etc/passwd"),
        ("file:// URL", "file:///etc/passwd"),
        ("NUL byte after a host file", "/etc/passwd\x00.img"),
        ("NUL byte inside a root path", f"{root}/a\x00/../../../etc/passwd"),
        ("4 KiB name outside the roots", "/" + "a" * 4095),
        ("4 KiB component inside a root", f"{root}/" + "b" * 4000),
        ("4 KiB of nested directories", str(root) + "/a" * ((4096 - len(str(root))) // 2)),
        ("over 4 KiB", f"{root}/" + "c" * 5000),
        ("relative name", "etc/passwd"),
        ("relative ../ escape", "../../../../etc/passwd"),
    ]


def assert_refused(place: Place, tally: Any, field: Field, what: str, value: str, client: Any, run_tasks: Callable[[], Any]) -> None:
    before = place.ground.snapshot()
    with run_tasks():
        response = field.send(client, value)
    leftovers, left = place.ground.leftovers(before)
    named = error_field(response)
    refused = 400 <= response.status_code < 500 and named == field.name
    detail = f"{response.status_code} field={named or '-'}" + (f"; left: {left}" if left else "")
    tally.record(SUITE, f"{field.name}: {what}", refused=refused, leftovers=leftovers, detail=detail)
    assert refused, (what, value[:200], response.status_code, response.content[:300])
    assert leftovers == 0, (what, left)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_fixed_hostile_paths_are_refused_and_leave_nothing(field: Field, place: Place, vm_api, run_tasks, tally) -> None:
    for what, value in fixed_cases(place, field.disk):
        assert_refused(place, tally, field, what, value, vm_api, run_tasks)


# --- Hypothesis ----------------------------------------------------------------------------------------------------

_chars = st.characters(exclude_categories=["Cs"])  # lone surrogates cannot travel in JSON
_component = st.one_of(
    st.sampled_from(["..", ".", "", "etc", "passwd", "shadow", "proc", "self", "environ", "dev", "sda", "root", "images"]),
    st.text(_chars, max_size=12),
    st.text(st.sampled_from("./:\x00\\%~ a"), max_size=8),
)


def hostile_paths(roots: list[Path]) -> st.SearchStrategy[str]:
    """Paths that are never an existing image inside the (empty) roots: escapes, protocols, NULs, junk, very long."""
    joined = st.lists(_component, min_size=1, max_size=8).map("/".join)
    prefixes = st.sampled_from(["/", "", "json:", "nbd:", "file:", "file://", "nbd://127.0.0.1:1/", "http://", "gluster://", "ssh:"])
    anchored = st.sampled_from([str(r) for r in roots] + [str(r) + "2" for r in roots]).flatmap(
        lambda root: st.builds(lambda n, tail: root + "/" + "../" * n + tail, st.integers(0, 12), joined)
    )
    return st.one_of(
        st.builds(lambda p, tail: p + tail, prefixes, joined),
        anchored,
        st.builds(lambda p, n, c: p + c * n, prefixes, st.integers(250, 4200), st.sampled_from(["a", "/", "../", "é", "\x00"])),
        st.text(_chars, min_size=1, max_size=64),
    )


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_generated_hostile_paths_are_refused_and_leave_nothing(field: Field, hv, disk_root, iso_dirs, vm_api, run_tasks, tally) -> None:
    ground = Ground(hv, [disk_root, hv.pool_dir, *iso_dirs.search, iso_dirs.download, iso_dirs.extra_root])
    roots = [disk_root, hv.pool_dir, iso_dirs.extra_root, *iso_dirs.search]
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(value=hostile_paths(roots))
    def offered(value: str) -> None:
        if value in seen:
            return  # the same value twice is one case
        seen.add(value)
        place = Place(ground, disk_root, iso_dirs.extra_root, iso_dirs.outside, Path(), Path(), Path(), Path())
        shown = ascii(value[:60]) + (f"... ({len(value)} chars)" if len(value) > 60 else "")
        assert_refused(place, tally, field, f"generated {shown}", value, vm_api, run_tasks)

    offered()
    assert len(seen) >= 30  # the strategy really produced distinct cases
    assert not any(os.scandir(hv.pool_dir))


# --- directories QEMU's user cannot search ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", [f for f in FIELDS if not f.disk], ids=lambda f: f.name)
def test_an_iso_in_a_directory_qemus_user_cannot_search_is_refused(field: Field, hv, iso_dirs, vm_api, run_tasks, tally, settings) -> None:
    """Inside the roots and a valid ISO, but QEMU (here: nobody) could not open it: a home directory and its kin."""
    top = Path(tempfile.mkdtemp(prefix="vapor-hostile-", dir="/var/tmp"))  # pytest's own directories are 0700
    top.chmod(0o755)
    try:
        settings.VAPOR = dataclasses.replace(settings.VAPOR, qemu_user="nobody", iso_roots=(top,))
        cases = {"0700 (a home directory)": 0o700, "0750 (group only)": 0o750, "0744 (readable, not searchable)": 0o744}
        for what, mode in cases.items():
            closed = top / f"closed-{mode:o}"
            closed.mkdir()
            iso = make_iso(closed / "installer.iso")
            closed.chmod(mode)
            place = Place(Ground(hv, [top, hv.pool_dir]), top, top, top, iso, iso, top, top)
            assert_refused(place, tally, field, f"ISO in a {what} directory QEMU's user cannot search", str(iso), vm_api, run_tasks)
            closed.chmod(0o700)
    finally:
        shutil.rmtree(top, ignore_errors=True)
