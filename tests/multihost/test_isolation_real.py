"""Failure isolation over the real hosts of the test bed (issue 15, point 7): vh2's libvirtd is killed.

Each host holds two defined domains of VMs Vapor knows (stopped). With vh2's daemon killed, the state refresh
turns vh2's VMs `unknown` (one "host down" event each) and marks vh2 down, while vh1's and vh3's are stored as
usual; requests about vh1's VMs answer at once, an action on vh2's is a 409 `host_down`. After `hosts.sh
restart vh2`, the health check finds it back and its VMs are `stopped` again, without restarting anything.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.multihost.conftest import LibvirtHost, hosts_sh
from tests.multihost.test_hosts import driver
from vms.host_models import Host, HostHealth
from vms.hypervisor import forget_hypervisors
from vms.models import VirtualMachine, VmEvent
from vms.services.hosts import hosts_check
from vms.services.states import vm_refresh_states

pytestmark = [pytest.mark.libvirt, pytest.mark.multihost, pytest.mark.django_db]

DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices><memballoon model='none'/></devices></domain>"""


@pytest.fixture
def fleet(libvirt_hosts: list[LibvirtHost]) -> Iterator[dict[str, list[VirtualMachine]]]:
    tag = uuid.uuid4().hex[:6]
    made: dict[str, list[VirtualMachine]] = {}
    forget_hypervisors()
    for host in libvirt_hosts:
        row = Host.objects.create(name=host.name, uri=host.uri)
        hv = driver(host)
        made[host.name] = []
        for index in range(2):
            name = f"iso-{host.name}-{index}-{tag}"
            hv.define_domain(DOMAIN.format(name=name))
            made[host.name].append(
                VirtualMachine.objects.create(name=name, memory_mb=32, vcpus=1, virt_type="qemu", status="stopped", host=row)
            )
    try:
        yield made
    finally:
        hosts_sh("restart", "vh2")  # idempotent when it runs
        for host in libvirt_hosts:
            hv = driver(host)
            for vm in made[host.name]:
                if hv.domain_exists(vm.name):
                    hv.undefine_domain(vm.name)
        forget_hypervisors()


def statuses(vms: list[VirtualMachine]) -> set[str]:
    return set(VirtualMachine.objects.filter(pk__in=[vm.pk for vm in vms]).values_list("status", flat=True))


def test_a_killed_host_turns_its_vms_unknown_the_others_work_and_all_reconcile_after_a_restart(
    libvirt_hosts: list[LibvirtHost], fleet: dict[str, list[VirtualMachine]], vm_api: Any
) -> None:
    hosts_check()
    assert vm_refresh_states() == 6
    assert hosts_sh("kill", "vh2").returncode == 0
    started = time.monotonic()
    assert vm_refresh_states() == 4  # vh1's and vh3's
    took = time.monotonic() - started
    print(f"\nmultihost isolation: refresh with vh2's libvirtd killed took {took * 1000:.0f} ms")
    assert took < 5
    assert statuses(fleet["vh2"]) == {"unknown"}
    assert statuses(fleet["vh1"]) == statuses(fleet["vh3"]) == {"stopped"}
    assert VmEvent.objects.filter(vm__in=fleet["vh2"], step="host down").count() == 2
    assert Host.objects.get(name="vh2").health == HostHealth.DOWN

    near = fleet["vh1"][0]
    started = time.monotonic()
    detail = vm_api.get(f"/api/v1/virtualmachines/{near.pk}")
    assert detail.status_code == 200 and detail.json()["state"] == "shutoff", detail.json()
    assert time.monotonic() - started < 2
    far = fleet["vh2"][0]
    refused = vm_api.post(f"/api/v1/virtualmachines/{far.pk}/start")
    assert (refused.status_code, refused.json()["code"]) == (409, "host_down"), refused.json()
    assert vm_api.get(f"/api/v1/virtualmachines/{far.pk}").status_code == 200  # shown, with its state unknown

    assert hosts_sh("restart", "vh2").returncode == 0
    assert hosts_check()["vh2"] == HostHealth.UP  # the schedule's check: vh2 is back, its VMs reconciled at once
    assert statuses(fleet["vh2"]) == {"stopped"}
    assert VmEvent.objects.filter(vm__in=fleet["vh2"], step="host back").count() == 2
    assert vm_api.post(f"/api/v1/virtualmachines/{far.pk}/start").json()["status"] == "running"
    vh2 = driver(libvirt_hosts[1])
    assert vh2.domain_state(far.name) == "running"
    vh2.destroy_domain(far.name)
