"""Placement over the three real hosts of the test bed (issue 15, point 3), with real TCG guests.

vh1..vh3 (scripts/hosts.sh) are Host rows with a small memory budget (10% of the machine's memory each, the
lowest ratio the API accepts); the default host is disabled. A Linux bridge `br-mh` exists in vh1's and vh3's
network namespaces only. VMs of 60% of one budget, with a NIC on that bridge, booting the shell ISO:

- the dry run picks vh1 (all equal: by name) and says why the others were refused (vh2: no such bridge;
  default: disabled); the VM is created there and its guest boots;
- vh1's budget is now too full for a second one: the dry run picks vh3, naming vh1's memory figures and vh2's
  bridge; created, it runs on vh3;
- a third fits nowhere: 409 `no_host` with every host's reasons, and nothing is left behind;
- vh2, without the bridge, was never chosen.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bootiso import SHELL_READY
from tests.multihost.conftest import LibvirtHost
from tests.multihost.test_hosts import driver
from tests.support.api import CREATE_URL, post_create
from tests.support.guests import wait_for_text
from vms.host_models import DEFAULT_HOST, Host
from vms.hypervisor import forget_hypervisors
from vms.models import VirtualMachine
from vms.services.hosts import hosts_check

pytestmark = [pytest.mark.libvirt, pytest.mark.multihost, pytest.mark.slow, pytest.mark.django_db]

BRIDGE = "br-mh"
RATIO = 0.1  # of the host's memory: the budget
BOOT_TIMEOUT = 300.0


def in_netns(host: LibvirtHost, *command: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", f"vapor-{host.name}", *command], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def placed_hosts(libvirt_hosts: list[LibvirtHost], tcg_guests: Path) -> Iterator[list[LibvirtHost]]:
    Host.objects.filter(name=DEFAULT_HOST).update(enabled=False)
    for host in libvirt_hosts:
        Host.objects.create(name=host.name, uri=host.uri, memory_overcommit=RATIO)
    with_bridge = [libvirt_hosts[0], libvirt_hosts[2]]
    for host in with_bridge:
        in_netns(host, "ip", "link", "add", BRIDGE, "type", "bridge")
        in_netns(host, "ip", "link", "set", BRIDGE, "up")
    forget_hypervisors()
    assert hosts_check() == {DEFAULT_HOST: "up", "vh1": "up", "vh2": "up", "vh3": "up"}  # the schedule's first check
    try:
        yield libvirt_hosts
    finally:
        for vm in VirtualMachine.objects.all():
            for host in libvirt_hosts:
                subprocess.run(["virsh", "-c", host.uri, "destroy", vm.name], capture_output=True, timeout=60, check=False)
                subprocess.run(
                    ["virsh", "-c", host.uri, "undefine", vm.name, "--remove-all-storage"], capture_output=True, timeout=60, check=False
                )
        for host in with_bridge:
            subprocess.run(
                ["ip", "netns", "exec", f"vapor-{host.name}", "ip", "link", "del", BRIDGE], capture_output=True, timeout=30, check=False
            )
        forget_hypervisors()


def test_vms_fill_one_hosts_budget_then_land_elsewhere_never_where_the_bridge_is_missing(
    vm_api: Any, run_tasks: Any, placed_hosts: list[LibvirtHost], shared_iso: Path
) -> None:
    vh1, vh2, vh3 = placed_hosts
    host_mb = driver(vh1).host_resources().memory_bytes // 2**20
    budget = int(host_mb * RATIO)
    memory = int(budget * 0.6)  # one fits a host, two do not

    def payload(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "memory": memory,
            "vcpus": 1,
            "graphics": {"type": "none"},
            "iso_path": str(shared_iso),
            "disks": [{"size": 1}],
            "networks": [{"type": "bridge", "source": BRIDGE}],
        }

    tag = uuid.uuid4().hex[:6]
    first = vm_api.post(CREATE_URL + "?dry_run=true", payload(f"pl-a-{tag}"), format="json")
    assert first.status_code == 200, first.json()
    placement = first.json()["placement"]
    assert placement["host"] == "vh1" and placement["requested"] is False
    assert "bridge" in " ".join(placement["refused"]["vh2"]) and BRIDGE in " ".join(placement["refused"]["vh2"])
    assert placement["refused"][DEFAULT_HOST] == ["disabled"]
    assert not VirtualMachine.objects.exists()  # a dry run leaves nothing

    created = post_create(vm_api, run_tasks, payload(f"pl-a-{tag}"))
    assert created.status_code == 202, created.json()
    a = VirtualMachine.objects.get(pk=created.json()["id"])
    assert (a.status, a.host.name, created.json()["host"]) == ("running", "vh1", "vh1"), a.error
    wait_for_text(vh1.serial_log(a.name), SHELL_READY, BOOT_TIMEOUT)

    second = vm_api.post(CREATE_URL + "?dry_run=true", payload(f"pl-b-{tag}"), format="json")
    assert second.status_code == 200, second.json()
    placement = second.json()["placement"]
    print(f"\nmultihost placement: second VM -> {placement['host']}; refused {placement['refused']}")
    assert placement["host"] == "vh3"
    assert any(
        reason.startswith(f"memory: {memory} MB used by 1 VM(s) + {memory} MB asked > {budget} MB budget")
        for reason in placement["refused"]["vh1"]
    )
    assert BRIDGE in " ".join(placement["refused"]["vh2"])
    created = post_create(vm_api, run_tasks, payload(f"pl-b-{tag}"))
    assert created.status_code == 202, created.json()
    b = VirtualMachine.objects.get(pk=created.json()["id"])
    assert (b.status, b.host.name) == ("running", "vh3"), b.error
    assert driver(vh3).domain_state(b.name) == "running" and not driver(vh1).domain_exists(b.name)
    wait_for_text(vh3.serial_log(b.name), SHELL_READY, BOOT_TIMEOUT)

    third = post_create(vm_api, run_tasks, payload(f"pl-c-{tag}"))
    assert third.status_code == 409 and third.json()["code"] == "no_host", third.json()
    refused = third.json()["refused"]
    assert set(refused) == {"vh1", "vh2", "vh3", DEFAULT_HOST}
    assert all(reason.startswith("memory:") for name in ("vh1", "vh3") for reason in refused[name])
    assert not VirtualMachine.objects.filter(name=f"pl-c-{tag}").exists()
    assert all(not driver(host).domain_exists(f"pl-c-{tag}") for host in placed_hosts)
    assert not driver(vh2).list_domain_names() or all(not n.startswith("pl-") for n in driver(vh2).list_domain_names())
