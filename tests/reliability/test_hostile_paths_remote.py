"""The hostile-path suite against a remote host (issue 15, point 4).

The default host's URI names another machine, so an existing disk or a clone source is checked through that
host's libvirt (a volume of one of its pools, by exact path; headers read with the storage API), never on the
portal's file system. The disk root is one of the host's pools, so a path that stays inside it would pass the
pool guard: every trick of tests/reliability/test_hostile_paths.py (escapes, symlinks, devices, protocols,
NULs, very long names, relative names) and its generated paths must still be refused with a 4xx naming the
field, leaving nothing behind.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import test_hostile_paths as suite
from tests.reliability.hostile import Ground
from vms.models import Host

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "hostile paths, remote host"
REMOTE = "qemu+tcp://10.99.1.2/system"
hv = suite.hv
disk_root = suite.disk_root
place = suite.place
DISK_FIELDS = [field for field in suite.FIELDS if field.disk]


@pytest.fixture
def remote_place(place: suite.Place, hv, monkeypatch: pytest.MonkeyPatch) -> suite.Place:
    """The fake answers for every URI; the default host's URI makes it remote, the disk root one of its pools."""
    hv.pools["shared"] = place.disk_root
    Host.objects.update_or_create(name="default", defaults={"uri": REMOTE})
    monkeypatch.setattr(suite, "SUITE", SUITE)
    return place


@pytest.mark.parametrize("field", DISK_FIELDS, ids=lambda f: f.name)
def test_fixed_hostile_paths_are_refused_on_a_remote_host(field: suite.Field, remote_place: suite.Place, hv, vm_api, run_tasks, tally):
    for what, value in suite.fixed_cases(remote_place, True):
        suite.assert_refused(remote_place, tally, field, f"remote {what}", value, vm_api, run_tasks)
    assert hv.calls["define_domain"] == 0


@pytest.mark.parametrize("field", DISK_FIELDS, ids=lambda f: f.name)
def test_generated_hostile_paths_are_refused_on_a_remote_host(field: suite.Field, remote_place: suite.Place, hv, vm_api, run_tasks, tally):
    ground: Ground = remote_place.ground
    roots = [remote_place.disk_root, hv.pool_dir]
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(value=suite.hostile_paths(roots))
    def offered(value: str) -> None:
        if value in seen:
            return
        seen.add(value)
        shown = ascii(value[:60]) + (f"... ({len(value)} chars)" if len(value) > 60 else "")
        suite.assert_refused(remote_place, tally, field, f"remote generated {shown}", value, vm_api, run_tasks)

    offered()
    assert len(seen) >= 30 and ground is remote_place.ground
    assert not any(os.scandir(hv.pool_dir))


_ = st  # the strategies are the suite's own


def test_a_name_longer_than_the_host_allows_is_refused_before_the_host_is_asked(remote_place: suite.Place, hv, vm_api, monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(hv, "volume_by_path", lambda path: asked.append(path))
    too_long_part = f"{remote_place.disk_root}/" + "b" * 256
    too_long_name = f"{remote_place.disk_root}/" + "ééé/" * 600 + "d"  # under 4096 characters, over 4096 bytes
    for value in (too_long_part, too_long_name):
        response = vm_api.post(suite.CREATE_URL, suite.vm_payload(disks=[{"path": value}]), format="json")
        assert response.status_code == 400 and response.json()["field"] == "disks.0.path", response.json()
        assert "longer than a file name on the host may be" in response.json()["detail"]
    assert asked == []
