"""Failure isolation over several hosts (issue 15, point 7), on FakeHosts: the state refresh reads each host
apart, a dead host turns only its own VMs unknown, they reconcile when it is back, and requests about the
other hosts' VMs never ask the dead one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from tests.fakes import FakeDomain, FakeHosts, FakeHypervisor
from tests.support.factories import VirtualMachineFactory
from vms.host_models import Host, HostHealth
from vms.models import VirtualMachine, VmEvent
from vms.services.adoption import vm_sync
from vms.services.hosts import hosts_check
from vms.services.states import vm_refresh_states

pytestmark = pytest.mark.django_db

URIS = {"h1": "qemu+tcp://10.99.0.1/system", "h2": "qemu+tcp://10.99.0.2/system", "h3": "qemu+tcp://10.99.0.3/system"}


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHosts:
    fakes = FakeHosts(pool_root=tmp_path)
    for name, uri in URIS.items():
        fakes.add(uri)
        Host.objects.create(name=name, uri=uri)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", fakes.get)
    return fakes


def put(fake: FakeHypervisor, name: str, state: str = "running") -> None:
    fake.domains[name] = FakeDomain(f"<domain type='kvm'><name>{name}</name><uuid>{uuid.uuid4()}</uuid></domain>", state=state)


def fleet(hosts: FakeHosts, per_host: int) -> None:
    """`per_host` running VMs on each of h1..h3, every domain there and running."""
    for name, uri in URIS.items():
        host = Host.objects.get(name=name)
        VirtualMachine.objects.bulk_create(
            VirtualMachineFactory.build(name=f"{name}-vm{i}", memory_mb=512, status="running", host=host) for i in range(per_host)
        )
        for i in range(per_host):
            put(hosts.by_uri[uri], f"{name}-vm{i}")


def statuses(prefix: str) -> set[str]:
    return set(VirtualMachine.objects.filter(name__startswith=prefix).values_list("status", flat=True))


def test_each_vm_is_read_on_its_own_host(hosts):
    fleet(hosts, 2)
    hosts.by_uri[URIS["h2"]].domains["h2-vm0"].state = "shutoff"
    del hosts.by_uri[URIS["h3"]].domains["h3-vm1"]
    put(hosts.by_uri[URIS["h1"]], "h3-vm1")  # a domain of that name on another host is not that VM's
    assert vm_refresh_states() == 6
    got = dict(VirtualMachine.objects.values_list("name", "status"))
    assert got == {"h1-vm0": "running", "h1-vm1": "running", "h2-vm0": "stopped", "h2-vm1": "running",
                   "h3-vm0": "running", "h3-vm1": "missing"}  # fmt: skip
    assert all(hosts.by_uri[uri].calls["list_domains"] == 1 for uri in URIS.values())


def test_a_dead_host_turns_only_its_vms_unknown_and_they_reconcile_when_it_is_back(hosts):
    fleet(hosts, 3)
    hosts.by_uri[URIS["h2"]].domains["h2-vm1"].state = "shutoff"
    VirtualMachine.objects.filter(name="h2-vm1").update(status="stopped")
    hosts.down(URIS["h2"])
    assert vm_refresh_states() == 6  # h1's and h3's
    assert statuses("h1") == statuses("h3") == {"running"}
    assert statuses("h2") == {"unknown"}
    assert set(VirtualMachine.objects.filter(name__startswith="h2").values_list("state", flat=True)) == {""}
    events = VmEvent.objects.filter(step="host down")
    assert sorted(events.values_list("vm__name", flat=True)) == ["h2-vm0", "h2-vm1", "h2-vm2"]
    assert all(e.message.startswith("host down: cannot connect to qemu+tcp://10.99.0.2/system") for e in events)
    h2 = Host.objects.get(name="h2")
    assert (h2.health, h2.last_error.startswith("cannot connect")) == (HostHealth.DOWN, True)
    assert Host.objects.get(name="h1").health != HostHealth.DOWN

    vm_refresh_states()  # still down: no second event
    assert VmEvent.objects.filter(step="host down").count() == 3

    hosts.up(URIS["h2"])
    del hosts.by_uri[URIS["h2"]].domains["h2-vm2"]  # gone while the host was away
    asked = hosts.asked[URIS["h2"]]
    assert vm_refresh_states() == 6  # a host marked down is left to the health check: not asked, never waited on
    assert hosts.asked[URIS["h2"]] == asked and statuses("h2") == {"unknown"}
    assert hosts_check()["h2"] == HostHealth.UP  # the schedule's check finds it back and reconciles its VMs at once
    got = dict(VirtualMachine.objects.filter(name__startswith="h2").values_list("name", "status"))
    assert got == {"h2-vm0": "running", "h2-vm1": "stopped", "h2-vm2": "missing"}
    back = dict(VmEvent.objects.filter(step="host back").values_list("vm__name", "message"))
    assert back == {
        "h2-vm0": "the host answers again; its domain is running",
        "h2-vm1": "the host answers again; its domain is shutoff",
        "h2-vm2": "the host answers again; its domain is no longer defined there",
    }
    assert Host.objects.get(name="h2").health == HostHealth.UP


def test_the_refresh_over_3_hosts_takes_the_same_queries_for_3_or_30_vms_one_host_dead_or_not(hosts):
    def queries(per_host: int) -> int:
        VirtualMachine.objects.all().delete()
        for fake in hosts.by_uri.values():
            fake.domains.clear()
        Host.objects.update(health=HostHealth.UP)
        fleet(hosts, per_host)
        with CaptureQueriesContext(connection) as seen:
            vm_refresh_states()
        return len(seen)

    small, large = queries(1), queries(10)
    assert small == large
    hosts.down(URIS["h3"])
    dead_small, dead_large = queries(1), queries(10)
    assert dead_small == dead_large
    # the dead host's work: its VMs turned unknown (one UPDATE), their events (one INSERT), the host marked down
    assert dead_small == small + 3


def test_an_action_on_an_unknown_vm_is_409_host_down_and_other_hosts_vms_still_work(hosts, django_user_model):
    fleet(hosts, 1)
    hosts.down(URIS["h2"])
    vm_refresh_states()
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("root", password=None))
    h2 = VirtualMachine.objects.get(name="h2-vm0")
    h1 = VirtualMachine.objects.get(name="h1-vm0")
    asked = hosts.asked[URIS["h2"]]
    refused = client.post(f"/api/v1/virtualmachines/{h2.pk}/reboot")
    assert refused.status_code == 409, refused.content
    assert (refused.json()["code"], refused.json()["host"]) == ("host_down", "h2")
    assert "does not answer" in refused.json()["detail"]
    before = hosts.asked[URIS["h2"]]
    assert before == asked + 1  # asked once more, then refused

    # Requests about the other hosts' VMs: answered, without asking the dead host at all.
    for url in (f"/api/v1/virtualmachines/{h1.pk}", "/api/v1/virtualmachines/", "/api/v1/hosts"):
        assert client.get(url).status_code == 200, url
    assert client.post(f"/api/v1/virtualmachines/{h1.pk}/reboot").status_code == 200
    assert hosts.asked[URIS["h2"]] == before
    detail = client.get(f"/api/v1/virtualmachines/{h2.pk}")  # the unknown VM's page answers too, saying so
    assert detail.status_code == 200 and detail.json()["status"] == "unknown"

    hosts.up(URIS["h2"])
    done = client.post(f"/api/v1/virtualmachines/{h2.pk}/reboot")  # back: the action reconciles first, then acts
    assert done.status_code == 200, done.content
    assert VirtualMachine.objects.get(pk=h2.pk).status == "running"


def test_sync_adopts_per_host_and_a_name_taken_on_another_host_is_not_adopted(hosts):
    fleet(hosts, 1)
    put(hosts.by_uri[URIS["h2"]], "h1-vm0")  # the same name as h1's VM, on h2
    put(hosts.by_uri[URIS["h2"]], "stray")
    report = vm_sync(host=Host.objects.get(name="h2"), adopt=True)
    assert report.unknown == ["h1-vm0", "stray"]
    assert report.adopted == ["stray"]
    assert report.not_adopted == {"h1-vm0": "VM h1-vm0 is on host h1 (VM names are unique across Vapor)"}
    assert VirtualMachine.objects.get(name="stray").host.name == "h2"
    assert VirtualMachine.objects.get(name="h1-vm0").host.name == "h1"
    assert VirtualMachine.objects.get(name="h1-vm0").status == "running"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "", {"memory": 256}),
        ("post", "/disks", {"size": 1}),
        ("post", "/nics", {"type": "nat", "source": "default"}),
        ("post", "/snapshots", {"name": "s1"}),
        ("post", "/console", {"type": "vnc"}),
        ("post", "/start", None),
        ("post", "/force-stop", None),
        ("delete", "", None),
    ],
)
def test_no_request_about_a_vm_on_a_dead_host_is_a_500(hosts, django_user_model, method, path, body):
    fleet(hosts, 1)
    hosts.down(URIS["h2"])
    vm_refresh_states()
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("root", password=None))
    vm = VirtualMachine.objects.get(name="h2-vm0")
    url = f"/api/v1/virtualmachines/{vm.pk}{path}"
    response = getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url)
    assert response.status_code in (409, 503), (response.status_code, response.content[:300])
    assert response.json()["code"] in ("host_down", "hypervisor_unavailable", "vm_busy"), response.json()


def test_a_vm_being_migrated_is_left_to_its_migration(hosts):
    from vms.migration_models import VmMigration

    fleet(hosts, 1)
    vm = VirtualMachine.objects.get(name="h2-vm0")
    del hosts.by_uri[URIS["h2"]].domains["h2-vm0"]  # libvirt has moved it; Vapor has not changed its host yet
    VmMigration.objects.create(vm=vm, source=vm.host, destination=Host.objects.get(name="h3"), status="running")
    vm_refresh_states()
    assert VirtualMachine.objects.get(name="h2-vm0").status == "running"  # not "missing"
    VmMigration.objects.filter(vm=vm).update(status="failed")
    vm_refresh_states()
    assert VirtualMachine.objects.get(name="h2-vm0").status == "missing"
