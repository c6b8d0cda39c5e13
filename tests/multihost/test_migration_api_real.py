"""Live migration through Vapor's API against real libvirt hosts (issue 15 point 6): vh1..vh3 of scripts/hosts.sh
(tests/multihost/conftest.py), each a Host row.

A probe guest is created through Vapor on vh1 (create-enhanced with host "vh1", TCG, the shell ISO from a directory
every host sees at the same path, a 1 GB qcow2 disk in vh1's `default` pool). Then:

1. the VM's CD-ROM holds vh1's copy of the library ISO (vapor-isos pool); each migration's task first makes sure
   the destination has its copy at the same path (copied once, checked there);
2. to vh3, whose `default` pool is stopped after the request was accepted: the source's libvirtd is refused, the
   migration `failed`, the VM still runs on vh1, VM.host unchanged, the failure on the VM's event log;
3. to vh3, whose libvirtd is killed after the request was accepted: the same;
4. to vh2 with copied storage (the ISO copied there by the task): polled through the
   API to `succeeded`; VM.host is vh2; the guest answers on its serial console on vh2 and reads back from its disk
   what it wrote on vh1; Vapor removed its volume from vh1.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bootiso import SHELL_READY
from tests.multihost.conftest import LibvirtHost, hosts_sh
from tests.multihost.test_hosts import RemoteGuest, driver, remove_guest, say_hello, serial_exchange
from tests.support.api import post_create
from tests.support.guests import wait_for_text
from vms.host_models import Host
from vms.hypervisor import forget_hypervisors
from vms.iso_copies import IsoHostCopy
from vms.models import VirtualMachine, VmEvent

pytestmark = [pytest.mark.libvirt, pytest.mark.multihost, pytest.mark.slow, pytest.mark.django_db]

API = "/api/v1/virtualmachines/"
BOOT_TIMEOUT = 300.0
MIGRATION_TIMEOUT = 300.0


def virsh(host: LibvirtHost, *args: str) -> None:
    result = subprocess.run(["virsh", "-c", host.uri, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def vapor_on_hosts(libvirt_hosts: list[LibvirtHost], tcg_guests: Path) -> Iterator[list[LibvirtHost]]:
    """Host rows vh1..vh3; Vapor's settings for TCG guests whose ISO sits in the shared directory."""
    for host in libvirt_hosts:
        Host.objects.create(name=host.name, uri=host.uri)
    forget_hypervisors()
    try:
        yield libvirt_hosts
    finally:
        forget_hypervisors()


def poll(vm_api: Any, url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = vm_api.get(url).json()
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_a_vm_made_by_vapor_migrates_live_with_its_disk_and_a_refused_one_stays(
    vm_api: Any, run_tasks: Any, vapor_on_hosts: list[LibvirtHost], shared_iso: Path
) -> None:
    vh1, vh2, vh3 = vapor_on_hosts
    name = f"mig-{uuid.uuid4().hex[:8]}"
    created = post_create(
        vm_api,
        run_tasks,
        {
            "name": name,
            "host": "vh1",
            "memory": 256,
            "vcpus": 1,
            "graphics": {"type": "none"},
            "iso_path": str(shared_iso),
            "disks": [{"size": 1}],
            "networks": [],
        },
    )
    assert created.status_code == 202, created.json()
    vm = VirtualMachine.objects.get(pk=created.json()["id"])
    disk = vm.disks.get()
    guest = RemoteGuest(name=name, disk=disk.path, host=vh1)
    try:
        assert vm.status == "running" and vm.host.name == "vh1", vm.error
        wait_for_text(vh1.serial_log(name), SHELL_READY, BOOT_TIMEOUT)
        source = driver(vh1)
        say_hello(source, name, "vh1")
        mark = f"VAPORMARK-{uuid.uuid4().hex[:12]}"
        serial_exchange(source, name, f"echo {mark} > /dev/vda; sync; echo WR''OTE", "WROTE")
        migrate_url = f"{API}{vm.pk}/migrate"

        # 1. The ISO (vh1's checked copy of the library's) follows the VM: the task copies it to the destination first.
        # 2. vh3's pool goes away between the request and the task: the source's libvirtd is refused.
        with run_tasks():
            accepted = vm_api.post(migrate_url, {"host": "vh3", "copy_storage": True}, format="json")
            assert accepted.status_code == 202, accepted.json()
            virsh(vh3, "pool-destroy", "default")
        try:
            failed = vm_api.get(accepted["Location"]).json()
        finally:
            virsh(vh3, "pool-start", "default")
        print(f"\nmultihost: migration to a host without the pool: {failed['status']}: {failed['error']}")
        assert failed["status"] == "failed" and failed["finished_at"], failed
        assert VirtualMachine.objects.get(pk=vm.pk).host.name == "vh1"
        assert source.domain_state(name) == "running" and not driver(vh3).domain_exists(name)
        event = VmEvent.objects.filter(vm=vm, step="migrate", status="failed").latest("at")
        assert f"{name} running on vh1" in event.message, event.message

        # 3. vh3's libvirtd killed between the request and the task.
        with run_tasks():
            accepted = vm_api.post(migrate_url, {"host": "vh3", "copy_storage": True}, format="json")
            assert accepted.status_code == 202, accepted.json()
            assert hosts_sh("kill", vh3.name).returncode == 0
        try:
            failed = vm_api.get(accepted["Location"]).json()
            print(f"multihost: migration to a host whose libvirtd is killed: {failed['status']}: {failed['error']}")
        finally:
            assert hosts_sh("restart", vh3.name).returncode == 0
        assert failed["status"] == "failed" and vh3.uri in failed["error"], failed
        assert VirtualMachine.objects.get(pk=vm.pk).host.name == "vh1" and source.domain_state(name) == "running"
        assert VmEvent.objects.filter(vm=vm, step="migrate", status="failed").count() == 2
        say_hello(source, name, "still-vh1")

        # 4. To vh2 with its disk copied.
        started = time.monotonic()
        with run_tasks():
            accepted = vm_api.post(migrate_url, {"host": "vh2", "copy_storage": True}, format="json")
            assert accepted.status_code == 202, accepted.json()
            assert accepted.json()["status"] == "queued" and accepted.json()["destination"] == "vh2"
        done = poll(vm_api, accepted["Location"], MIGRATION_TIMEOUT)
        took = time.monotonic() - started
        print(f"multihost: API migration vh1 -> vh2 (1 GB qcow2 copied) {done['status']} after {took:.2f} s: {done['progress']}")
        assert done["status"] == "succeeded", done
        assert done["progress"]["processed_bytes"] > 0 and done["progress"]["percent"] == 100.0
        vm.refresh_from_db()
        assert vm.host.name == "vh2" and vm.status == "running"
        guest.host = vh2
        dest = driver(vh2)
        assert dest.domain_state(name) == "running" and not source.domain_exists(name)
        say_hello(dest, name, "vh2")
        read_back = serial_exchange(dest, name, "echo 3 > /proc/sys/vm/drop_caches; head -c 22 /dev/vda; echo; echo RE''AD", "READ")
        assert mark in read_back
        assert not (vh1.data / "lib" / "images" / Path(disk.path).name).exists(), "the source's copy of the disk is still on vh1"
        assert (vh2.data / "lib" / "images" / Path(disk.path).name).exists()
        assert VmEvent.objects.filter(vm=vm, step="migrate", status="done", message__startswith="migrated from vh1 to vh2 in ").exists()
        assert IsoHostCopy.objects.get(iso=vm.cdroms.get().iso, host__name="vh2").status == "ready"
        listed = vm_api.get(f"{API}{vm.pk}/migrations").json()
        assert [m["status"] for m in listed] == ["succeeded", "failed", "failed"]
        source.close()
        dest.close()
    finally:
        remove_guest(guest, vapor_on_hosts)
