"""A host that dies while a VM is provisioned on it (issue 15, point 7): the VM fails cleanly, what its
rollback could not reach stays recorded, and once the host answers again the health check removes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.fakes import FakeHosts
from tests.support.api import post_create
from vaporsite.errors import ServiceUnavailable
from vms.host_models import Host
from vms.models import VirtualMachine, VmEvent
from vms.services.hosts import hosts_check

pytestmark = pytest.mark.django_db
H2 = "qemu+tcp://10.99.0.2/system"
GONE = ServiceUnavailable(f"cannot connect to {H2}: Connection reset by peer (libvirt is unreachable)")


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHosts:
    fakes = FakeHosts(pool_root=tmp_path / "hosts")
    fakes.default = fakes.add(django_settings.VAPOR.libvirt_uri)
    fakes.add(H2)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", fakes.get)
    Host.objects.create(name="h2", uri=H2)
    return fakes


def test_a_vm_whose_host_dies_mid_way_fails_and_its_leftovers_go_once_the_host_is_back(hosts, vm_api, run_tasks):
    h2 = hosts.by_uri[H2]
    h2.fail.update({"define_domain": GONE, "delete_volume": GONE})  # the volume is made, then the host is gone
    response = post_create(vm_api, run_tasks, {"name": "midway", "memory": 512, "vcpus": 1, "disks": [{"size": 2}], "host": "h2"})
    assert response.status_code == 202, response.content
    vm = VirtualMachine.objects.get(name="midway")
    assert (vm.status, vm.host.name) == ("failed", "h2")
    assert "define domain failed" in vm.error
    leftovers = sorted(p.name for p in h2.pool_dir.iterdir())
    assert leftovers == ["midway-disk0.qcow2"]  # the rollback could not reach the host
    assert VmEvent.objects.filter(vm=vm, status="undo_failed").exists()

    hosts_check()  # still gone: nothing changes, nothing is forgotten
    assert sorted(p.name for p in h2.pool_dir.iterdir()) == leftovers

    h2.fail.clear()  # the host answers again
    hosts_check()
    assert list(h2.pool_dir.iterdir()) == []
    assert VmEvent.objects.filter(vm=vm, step="clean up", status="done").count() == 1
    hosts_check()  # done once: not again
    assert VmEvent.objects.filter(vm=vm, step="clean up").count() == 1
    assert h2.domains == {}
