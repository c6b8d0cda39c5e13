"""`manage.py sync_vms` against the real libvirtd: a domain defined behind Vapor's
back is reported and adopted; one undefined behind its back makes its VM missing.
Nothing is ever deleted by the sync."""

from __future__ import annotations

import secrets
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.integration.conftest import unique, virsh
from tests.integration.vm_support import VmEnv
from tests.support.images import make_image
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.models import VirtualMachine
from vms.services.states import vm_refresh_states

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
MIB = 1024**2


def sync_vms(*args: str) -> str:
    out = StringIO()
    call_command("sync_vms", *args, stdout=out)
    return out.getvalue()


def domain_xml(name: str, domain_uuid: str, root: str, data: str, mac: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{domain_uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{root}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{data}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='default'/>
      <model type='e1000e'/>
    </interface>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
"""


def defined(name: str) -> bool:
    return virsh("dominfo", name, check=False).returncode == 0


def test_a_foreign_domain_is_reported_adopted_and_marked_missing_when_undefined(hypervisor: LibvirtDriver, vm_env: VmEnv):
    name = unique("it-sync")
    root = hypervisor.create_volume(vm_env.pool, f"{name}-root.qcow2", 64 * MIB)
    data = make_image(vm_env.disks / f"{name}-data.qcow2")
    mac = "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))
    domain_uuid = str(uuid.uuid4())
    definition = vm_env.disks / f"{name}.xml"
    definition.write_text(domain_xml(name, domain_uuid, root.path, str(data), mac))
    try:
        virsh("define", str(definition))
        listed = {d.name: d for d in hypervisor.list_domains()}[name]
        assert (listed.uuid, listed.state, listed.autostart, listed.persistent) == (domain_uuid, "shutoff", False, True)

        out = sync_vms()
        unknown = out.split("Domains on the host that Vapor does not know:")[1].split("(run with --import")[0]
        assert f"  {name}\n" in unknown
        assert not VirtualMachine.objects.filter(name=name).exists()

        out = sync_vms("--import", "--dry-run")
        assert "Would adopt as VMs" in out and not VirtualMachine.objects.filter(name=name).exists()

        out = sync_vms("--import")
        assert f"  {name}\n" in out.split("Adopted as VMs:")[1]
        vm = VirtualMachine.objects.get(name=name)
        assert (str(vm.uuid), vm.memory_mb, vm.vcpus, vm.virt_type, vm.architecture) == (domain_uuid, 256, 1, "qemu", "x86_64")
        assert vm.machine.startswith("pc-q35") and (vm.status, vm.state, vm.storage_pool) == ("stopped", "shutoff", vm_env.pool)
        assert (vm.graphics_type, vm.graphics_port, vm.graphics_listen) == ("vnc", -1, "127.0.0.1")
        disks = [(d.path, d.volume_name, d.format, d.bus, d.target_dev, d.readonly, d.created_by_vapor) for d in vm.disks.all()]
        assert disks == [
            (root.path, root.name, "qcow2", "virtio", "vda", False, False),
            (str(data), "", "qcow2", "virtio", "vdb", True, False),
        ]
        assert [(n.type, n.source, n.model, n.mac) for n in vm.nics.all()] == [("nat", "default", "e1000e", mac)]
        assert [e.step for e in vm.events.all()] == ["adopted"]
        assert f"  {name}\n" not in sync_vms().split("Summary:")[0]  # known now

        # The scheduled refresh follows the real domain's state.
        virsh("start", name)
        vm_refresh_states()
        vm.refresh_from_db()
        assert (vm.status, vm.state) == ("running", "running")
        virsh("destroy", name)
        vm_refresh_states()
        vm.refresh_from_db()
        assert (vm.status, vm.state) == ("stopped", "shutoff")

        # Undefined behind Vapor's back: missing, and nothing else goes.
        virsh("undefine", name)
        out = sync_vms()
        assert f"VMs marked missing (their domain is gone): 1\n  {name}\n" in out
        vm.refresh_from_db()
        assert (vm.status, vm.state) == ("missing", "")
        assert hypervisor.volume(vm_env.pool, root.name).path == root.path and data.exists()
        assert vm.disks.count() == 2 and vm.nics.count() == 1

        # Defined again: back.
        virsh("define", str(definition))
        out = sync_vms()
        assert f"VMs whose domain is back: 1\n  {name}\n" in out
        vm.refresh_from_db()
        assert (vm.status, vm.state) == ("stopped", "shutoff")
        assert [e.step for e in vm.events.all()] == ["adopted", "domain missing", "domain back"]
        assert defined(name) and hypervisor.volume(vm_env.pool, root.name).path == root.path and data.exists()
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


def test_a_daemon_that_does_not_answer_is_a_command_error(settings):
    with pytest.raises(CommandError, match="cannot connect to .*nowhere"):
        call_command("sync_vms", "--uri", "qemu+unix:///system?socket=/nonexistent/nowhere-sock")
