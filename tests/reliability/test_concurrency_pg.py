"""Concurrency on PostgreSQL (issue 5): racing requests leave one consistent outcome.

Real threads, each with its own database connection, released together by a
barrier, against the real API views; the hypervisor is the in-memory fake so
the rounds are quick and the race is between database transactions, where it
matters. Run by the PostgreSQL pass (`-m "reliability and postgres"`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django_q.conf import Conf
from rest_framework.test import APIClient

from isos.models import IsoImage
from projects.models import AuditEntry, Project
from tests.fakes import FakeHypervisor
from tests.support.api import CREATE_URL
from tests.support.factories import UserFactory
from tests.support.images import make_image
from tests.support.isos import make_iso, register_ready
from tests.support.projects import join
from tests.support.threads import in_threads
from vms.models import CdromAttachment, Disk, VirtualMachine

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SUITE = "concurrency (PostgreSQL)"
ROUNDS = 20


@pytest.fixture(autouse=True)
def _default_host() -> None:
    """The `default` Host row as every install has it (data migration 0017): these transactional tests flush the
    database after each test, and without the row twenty racing creates would all try to make it at once."""
    from vms.host_models import DEFAULT_HOST, Host

    Host.objects.get_or_create(name=DEFAULT_HOST)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHypervisor:
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    hv = FakeHypervisor(pool_dir=pool_dir)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", lambda uri=None: hv)
    monkeypatch.setattr(Conf, "SYNC", True)  # provisioning runs in the request's thread once it commits
    return hv


@pytest.fixture
def operator() -> User:
    user = UserFactory.create(username="racer", apps=["vms", "isos"])
    join(user, "operator")
    return user


def race(user: User, calls: list[Callable[[APIClient], int]]) -> list[int]:
    """Run every call in its own thread, released at once; their status codes in order (an exception fails the test)."""
    codes: list[int] = [0] * len(calls)

    def call(index: int) -> None:
        client = APIClient()
        client.force_authenticate(user)
        codes[index] = calls[index](client)

    errors = in_threads(len(calls), call)
    assert not errors, errors
    return codes


def _payload(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "memory": 256, "vcpus": 1, "disks": [{"size": 1}], "graphics": {"type": "none"}, **extra}


def _create_with(name: str, iso_id: str) -> Callable[[APIClient], int]:
    return lambda c: c.post(CREATE_URL, _payload(name, iso_path=iso_id), format="json").status_code


def _delete(iso_id: str) -> Callable[[APIClient], int]:
    return lambda c: c.delete(f"/api/v1/virtualmachines/isos/{iso_id}").status_code


def test_twenty_parallel_creates_with_one_name_make_exactly_one_vm(fake: FakeHypervisor, operator: User, tally):
    assert connection.vendor == "postgresql"
    codes = race(operator, [lambda c: c.post(CREATE_URL, _payload("race"), format="json").status_code] * 20)
    vms = VirtualMachine.objects.filter(name="race").count()
    domains = sorted(fake.domains)
    volumes = sorted(p.name for p in fake.pool_dir.iterdir())
    extra = (vms - 1) + (len(domains) - 1) + (len(volumes) - 1)
    tally.record(
        SUITE,
        "20 parallel creates with one name",
        refused=sorted(codes) == [202] + [409] * 19,
        leftovers=extra,
        detail=f"codes {dict(Counter(codes))}; {vms} row(s), domains {domains}, volumes {volumes}",
    )
    assert sorted(codes) == [202] + [409] * 19
    assert (vms, domains, volumes) == (1, ["race"], ["race-disk0.qcow2"])
    assert VirtualMachine.objects.get(name="race").status == "running"


def test_deleting_an_iso_while_a_vm_is_created_with_it_leaves_one_consistent_outcome(fake: FakeHypervisor, operator: User, iso_dirs, tally):
    assert connection.vendor == "postgresql"
    outcomes: Counter[str] = Counter()
    for round_ in range(ROUNDS):
        path = make_iso(iso_dirs.search[0] / f"race-{round_}.iso")
        iso = register_ready(path, name=f"race-{round_}")
        name = f"race-vm-{round_}"
        create, delete = race(operator, [_create_with(name, iso.pk), _delete(iso.pk)])
        vm = VirtualMachine.objects.filter(name=name).first()
        survivor = IsoImage.objects.filter(pk=iso.pk).first()
        if create == 202:
            # The VM won: the ISO was kept, is attached, and its use was counted once.
            won = delete == 409 and vm is not None and survivor is not None
            consistent = (
                won
                and vm is not None
                and survivor is not None
                and vm.status == "running"
                and CdromAttachment.objects.filter(vm=vm, iso=survivor).count() == 1
                and survivor.use_count == 1
                and path.exists()
            )
            outcome = "VM created, delete refused"
        else:
            # The delete won: no VM row, no domain, no attachment.
            consistent = delete == 204 and create in (400, 404, 409) and vm is None and survivor is None and name not in fake.domains
            outcome = "ISO deleted, create refused"
        outcomes[f"{outcome} ({create}/{delete})" if consistent else f"INCONSISTENT create {create}, delete {delete}"] += 1
        leftovers = 0 if consistent else 1
        tally.record(
            SUITE,
            f"delete an ISO while a VM is created with it (round {round_ + 1})",
            refused=consistent,
            leftovers=leftovers,
            detail=f"create {create}, delete {delete}",
        )
        assert consistent, (round_, create, delete, vm and (vm.status, vm.error), survivor and survivor.use_count, outcomes)
    # No orphan: every attachment points at an ISO that exists, every VM row is a created one.
    assert not CdromAttachment.objects.exclude(iso__in=IsoImage.objects.all()).exists()
    print(dict(outcomes))


def test_twenty_parallel_creates_against_a_quota_of_five_vms_make_exactly_five(fake: FakeHypervisor, tally):
    """Issue 11: the quota is checked under a lock on the project's row, so racing creates cannot all see room."""
    assert connection.vendor == "postgresql"
    project = Project.objects.create(name="racers", max_vms=5)
    user = UserFactory.create(username="quota-racer")
    join(user, "operator", project)
    bodies: list[dict[str, object]] = [{} for _ in range(20)]

    def create(index: int) -> Callable[[APIClient], int]:
        def call(client: APIClient) -> int:
            response = client.post(CREATE_URL, _payload(f"q-{index}", project="racers"), format="json")
            bodies[index] = response.json()
            return int(response.status_code)

        return call

    codes = race(user, [create(i) for i in range(20)])
    made = VirtualMachine.objects.filter(project=project)
    refused = [b for code, b in zip(codes, bodies, strict=True) if code == 409]
    leftovers = abs(made.count() - 5) + abs(len(fake.domains) - 5) + abs(len(list(fake.pool_dir.iterdir())) - 5)
    tally.record(
        SUITE,
        "20 parallel creates against a quota of 5 VMs",
        refused=sorted(codes) == [202] * 5 + [409] * 15,
        leftovers=leftovers,
        detail=f"codes {dict(Counter(codes))}; {made.count()} VM row(s), {len(fake.domains)} domain(s)",
    )
    assert sorted(codes) == [202] * 5 + [409] * 15, bodies
    assert made.count() == 5 and len(fake.domains) == 5 and leftovers == 0
    assert all(b["code"] == "quota_exceeded" and b["use"] == 5 and b["limit"] == 5 and b["quota"] == "max_vms" for b in refused), refused
    assert AuditEntry.objects.filter(action="vm.create", project=project).count() == 5


@pytest.mark.parametrize("checks", ["with validation", "constraint alone"])
def test_twenty_parallel_writable_attachments_of_one_file_let_exactly_one_win(
    fake: FakeHypervisor, operator: User, tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch, tally, checks: str
):
    """Issue 11: one writer per file. "constraint alone" turns validation's checks
    off, as if all twenty had validated before any stored its rows: the partial
    unique constraint `disk_writable_path_unique` is then all that decides."""
    assert connection.vendor == "postgresql"
    root = tmp_path / "shared"
    root.mkdir()
    shared = make_image(root / "shared.qcow2")
    settings.VAPOR = dataclasses.replace(settings.VAPOR, disk_roots=(root,))
    if checks == "constraint alone":
        monkeypatch.setattr("vms.services.validation._check_not_shared", lambda *args: None)
        monkeypatch.setattr("vms.services.validation._check_not_used_on_host", lambda *args: None)

    def attach(index: int) -> Callable[[APIClient], int]:
        payload = _payload(f"writer-{index}", disks=[{"path": str(shared)}])
        return lambda c: c.post(CREATE_URL, payload, format="json").status_code

    codes = race(operator, [attach(i) for i in range(20)])
    writers = list(Disk.objects.filter(path=str(shared)).values_list("vm__name", "readonly"))
    domains = sorted(fake.domains)
    ok = sorted(codes) == [202] + [409] * 19
    tally.record(
        SUITE,
        f"20 parallel writable attachments of one file ({checks})",
        refused=ok,
        leftovers=max(len(writers) - 1, 0) + max(len(domains) - 1, 0),
        detail=f"codes {dict(Counter(codes))}; writers {writers}; domains {domains}",
    )
    assert ok, codes
    assert len(writers) == 1 and writers[0][1] is False
    assert domains == [writers[0][0]] and VirtualMachine.objects.count() == 1


def test_twenty_parallel_creates_over_two_hosts_with_room_for_three_each_make_exactly_six(tmp_path: Path, monkeypatch, tally):
    """Issue 15's leftover: placement reads each host's room before anything is stored, so racing creates all saw
    room for themselves. `placement_confirm` counts again under a lock on the chosen host's row. The creates go
    to two projects (no project lock serialises them) and to automatic placement over two 3 GiB hosts."""
    from django.conf import settings as django_settings

    from tests.fakes import FakeHosts
    from vms.host_models import Host
    from vms.hypervisor import HostResources

    assert connection.vendor == "postgresql"
    hosts = FakeHosts(pool_root=tmp_path / "hosts")
    size = HostResources(3 * 2**30, cpus=8, model="x86_64", hostname="fake-3g")
    hosts.default = hosts.add(django_settings.VAPOR.libvirt_uri, host=size)
    second = hosts.add("qemu+tcp://10.99.0.2/system", host=size)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", hosts.get)
    monkeypatch.setattr(Conf, "SYNC", True)
    Host.objects.create(name="h2", uri="qemu+tcp://10.99.0.2/system")
    user = UserFactory.create(username="host-racer")
    for project in ("left", "right"):
        join(user, "operator", project)
    bodies: list[dict[str, object]] = [{} for _ in range(20)]

    def create(index: int) -> Callable[[APIClient], int]:
        def call(client: APIClient) -> int:
            payload = _payload(f"h-{index}", memory=1024, project=("left", "right")[index % 2])
            response = client.post(CREATE_URL, payload, format="json")
            bodies[index] = response.json()
            return int(response.status_code)

        return call

    codes = race(user, [create(i) for i in range(20)])
    per_host = Counter(VirtualMachine.objects.values_list("host__name", flat=True))
    domains = len(hosts.default.domains) + len(second.domains)
    refused = [b for code, b in zip(codes, bodies, strict=True) if code == 409]
    ok = sorted(codes) == [202] * 6 + [409] * 14
    tally.record(
        SUITE,
        "20 parallel creates over 2 hosts with room for 3 VMs each",
        refused=ok,
        leftovers=abs(sum(per_host.values()) - 6) + abs(domains - 6),
        detail=f"codes {dict(Counter(codes))}; VMs per host {dict(per_host)}; {domains} domain(s)",
    )
    assert ok, (codes, bodies)
    assert per_host == {"default": 3, "h2": 3} and domains == 6
    assert all(b["code"] in ("host_full", "no_host") for b in refused), refused
