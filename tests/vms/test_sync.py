"""State refresh, missing domains and adoption (vms.services.states, vms.services.adoption), on the in-memory hypervisor."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import Schedule

from isos.models import IsoImage
from tests.fakes import FakeDomain, FakeHypervisor
from tests.support.factories import IsoImageFactory, NetworkInterfaceFactory, VirtualMachineFactory
from vaporsite.errors import Conflict, HypervisorError
from vms import tasks
from vms.hypervisor.documents.domain import parse_definition
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services import states
from vms.services.adoption import vm_sync
from vms.services.lifecycle import vm_action, vm_delete, vm_sync_state
from vms.services.states import vm_refresh_states

pytestmark = pytest.mark.django_db


def domain(hv: FakeHypervisor, name: str, state: str = "shutoff", *, xml: str = "", persistent: bool = True) -> str:
    """Put a domain on the fake host; its UUID."""
    domain_uuid = str(uuid.uuid4())
    xml = xml or f"<domain type='kvm'><name>{name}</name><uuid>{domain_uuid}</uuid></domain>"
    hv.domains[name] = FakeDomain(xml, state=state, persistent=persistent)
    return parse_definition(xml).uuid


def vm(name: str, status: str = "running", **fields) -> VirtualMachine:
    return VirtualMachineFactory.create(name=name, memory_mb=512, status=status, **fields)


def steps(name: str) -> list[tuple[str, str]]:
    return [(e.step, e.message) for e in VmEvent.objects.filter(vm__name=name)]


# --- state refresh ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status"),
    [("running", "running"), ("paused", "running"), ("blocked", "running"), ("shutoff", "stopped"), ("shutdown", "stopped"),
     ("crashed", "stopped"), ("pmsuspended", "stopped"), ("nostate", "stopped")],
)  # fmt: skip
@pytest.mark.parametrize("before", ["running", "stopped"])
def test_refresh_stores_each_state_and_the_status_it_means(hv, state, status, before):
    vm("web", before)
    domain(hv, "web", state)
    assert vm_refresh_states() == 1
    row = VirtualMachine.objects.get(name="web")
    assert (row.status, row.state) == (status, state)
    assert row.state_checked_at is not None
    assert steps("web") == []  # a running <-> stopped change is no event


def test_a_vanished_domain_makes_the_vm_missing_and_its_return_brings_it_back(hv):
    vm("web", "running", state="running")
    vm_refresh_states()
    row = VirtualMachine.objects.get(name="web")
    assert (row.status, row.state) == ("missing", "")
    assert steps("web") == [("domain missing", "the domain is no longer defined on the host")]
    vm_refresh_states()  # still missing: no second event
    assert len(steps("web")) == 1
    domain(hv, "web", "paused")
    vm_refresh_states()
    row.refresh_from_db()
    assert (row.status, row.state) == ("running", "paused")
    assert steps("web")[1:] == [("domain back", "the domain is on the host again (paused)")]


@pytest.mark.parametrize("status", ["provisioning", "deleting", "failed"])
def test_vms_owned_by_a_task_or_failed_are_never_touched(hv, status):
    vm("busy", status)
    vm("gone", status)
    domain(hv, "busy", "running")
    assert vm_refresh_states() == 0
    for row in VirtualMachine.objects.all():
        assert (row.status, row.state, row.state_checked_at) == (status, "", None)
    assert not VmEvent.objects.exists()


def _fleet(hv: FakeHypervisor, size: int, prefix: str) -> None:
    """`size` VMs, a fifth each: running, stopped-but-running, gone, missing-and-back, still missing."""
    kinds = ["run", "wake", "gone", "back", "lost"]
    statuses = {"run": "running", "wake": "stopped", "gone": "running", "back": "missing", "lost": "missing"}
    VirtualMachine.objects.bulk_create(
        VirtualMachineFactory.build(name=f"{prefix}-{kinds[i % 5]}-{i}", memory_mb=512, status=statuses[kinds[i % 5]]) for i in range(size)
    )
    for i in range(size):
        if kinds[i % 5] in ("run", "wake", "back"):
            domain(hv, f"{prefix}-{kinds[i % 5]}-{i}", "running")


def _refresh_queries(hv: FakeHypervisor, size: int, prefix: str) -> int:
    _fleet(hv, size, prefix)
    VirtualMachine.objects.exclude(name__startswith=prefix).update(status="failed")  # the other fleet sits still
    with CaptureQueriesContext(connection) as queries:
        assert vm_refresh_states() == size
    return len(queries)


def test_refresh_uses_one_listing_and_the_same_queries_for_5_or_50_vms(hv, monkeypatch):
    def per_vm_call(name: str) -> str:
        raise AssertionError(f"domain_state({name}) called: the refresh must not ask libvirt per VM")

    monkeypatch.setattr(hv, "domain_state", per_vm_call)
    small = _refresh_queries(hv, 5, "small")
    large = _refresh_queries(hv, 50, "large")
    # savepoint, read, one UPDATE per (old status, new status, state) group (5 here), events,
    # the NICs' read and one UPDATE of the addresses' check (no NIC changed: no bulk update), release
    assert small == large == 11
    assert hv.calls["list_domains"] == hv.calls["domain_addresses"] == 2
    large_rows = VirtualMachine.objects.filter(name__startswith="large")
    assert large_rows.filter(status="running").count() == 30  # run, wake, back
    assert large_rows.filter(status="missing").count() == 20  # gone, lost
    assert VmEvent.objects.filter(vm__name__startswith="large", step="domain missing").count() == 10
    assert VmEvent.objects.filter(vm__name__startswith="large", step="domain back").count() == 10


def test_a_vm_a_delete_moves_on_during_the_refresh_is_left_alone(hv, monkeypatch):
    """The UPDATE takes only rows still in the status that was read."""
    vm("web", "running")
    decide = states.status_for

    def delete_starts_meanwhile(state):
        VirtualMachine.objects.filter(name="web").update(status="deleting")
        return decide(state)

    monkeypatch.setattr(states, "status_for", delete_starts_meanwhile)
    assert vm_refresh_states() == 0
    row = VirtualMachine.objects.get(name="web")
    assert (row.status, row.state_checked_at) == ("deleting", None)
    assert not VmEvent.objects.exists()


def test_a_vm_provisioned_during_the_listing_is_not_marked_missing(hv, monkeypatch):
    """The rows are read before the listing: a VM that became running after it was read is not in this run."""
    vm("new", "provisioning")
    listing = hv.list_domains

    def provisioning_finishes_meanwhile():
        result = listing()
        domain(hv, "new", "running")
        VirtualMachine.objects.filter(name="new").update(status="running")
        return result

    monkeypatch.setattr(hv, "list_domains", provisioning_finishes_meanwhile)
    assert vm_refresh_states() == 0
    assert vm_sync(hv=hv).marked_missing == []
    assert VirtualMachine.objects.get(name="new").status == "running" and not VmEvent.objects.exists()


def test_the_refresh_task_is_scheduled_every_minute(hv):
    schedule = Schedule.objects.get(name="vapor: refresh VM states")
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == ("vms.tasks.refresh_vm_states", "I", 1, -1)
    vm("web", "stopped")
    domain(hv, "web", "running")
    assert tasks.refresh_vm_states() == 1
    assert VirtualMachine.objects.get(name="web").status == "running"


# --- one VM: detail view and actions ------------------------------------------------


def test_sync_state_stores_the_state_and_marks_a_vanished_domain(hv):
    row = vm("web", "stopped")
    domain(hv, "web", "running")
    assert vm_sync_state(vm=row, hv=hv) == "running"
    stored = VirtualMachine.objects.get(name="web")
    assert (stored.status, stored.state, row.status) == ("running", "running", "running")
    assert stored.state_checked_at is not None
    del hv.domains["web"]
    assert vm_sync_state(vm=row, hv=hv) == "missing"
    assert VirtualMachine.objects.get(name="web").status == "missing"
    assert [step for step, _ in steps("web")] == ["domain missing"]


def test_actions_on_a_missing_vm_say_the_domain_is_gone(hv):
    row = vm("web", "missing")
    with pytest.raises(Conflict) as caught:
        vm_action(vm=row, action="start", hv=hv)
    assert caught.value.code == "vm_missing"
    assert "domain is gone" in caught.value.message and "sync_vms" in caught.value.message
    assert hv.calls["start_domain"] == 0


def test_the_api_list_never_calls_libvirt(vm_api, monkeypatch):
    def no_libvirt(uri=None):
        raise AssertionError("the VM list asked libvirt")

    monkeypatch.setattr("vms.hypervisor.get_hypervisor", no_libvirt)
    vm("web", "running", state="running")
    vm("db", "missing")
    response = vm_api.get("/api/v1/virtualmachines/")
    assert response.status_code == 200
    assert [v["status"] for v in response.json()["virtualmachines"]] == ["missing", "running"]


# --- sync and adoption ----------------------------------------------------------------

REALISTIC = """<domain type='kvm'>
  <name>legacy-web</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <firmware>
      <feature enabled='yes' name='enrolled-keys'/>
      <feature enabled='yes' name='secure-boot'/>
    </firmware>
  </os>
  <features><acpi/><apic/><smm state='on'/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{pool}/legacy-web.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{shared}/data.img'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='legacy-logs.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='export'><host name='10.0.0.9' port='10809'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{isos}/debian-12.iso'/>
      <target dev='sdc' bus='sata'/>
      <readonly/>
      <boot order='2'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{isos}/unknown.iso'/>
      <target dev='sdd' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sde' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <interface type='network'>
      <mac address='52:54:00:AA:BB:01'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='br0'/>
      <model type='e1000e'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:03'/>
    </interface>
    <serial type='pty'><log file='/var/log/legacy-web.serial.log' append='off'/><target port='0'/></serial>
    <graphics type='spice' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>
"""


@pytest.fixture
def legacy(hv: FakeHypervisor, tmp_path: Path) -> dict[str, Path]:
    """The realistic domain on the fake host with its files: two pool volumes, a shared file, an ISO of the library."""
    shared, isos = tmp_path / "shared", tmp_path / "isos"
    shared.mkdir()
    isos.mkdir()
    files = {
        "root": hv.pool_dir / "legacy-web.qcow2",
        "logs": hv.pool_dir / "legacy-logs.qcow2",
        "data": shared / "data.img",
        "iso": isos / "debian-12.iso",
    }
    for path in files.values():
        path.write_bytes(b"someone's data " + path.name.encode())
    IsoImageFactory.create(name="debian-12.iso", path=str(files["iso"]))
    domain(hv, "legacy-web", "running", xml=REALISTIC.format(uuid=uuid.uuid4(), pool=hv.pool_dir, shared=shared, isos=isos))
    hv.domains["legacy-web"].autostart = True
    return files


def test_sync_reports_unknown_domains_and_missing_vms_and_writes_no_vm(hv, legacy):
    vm("vapor-vm", "running")
    report = vm_sync(hv=hv)
    assert (report.unknown, report.adopted, report.marked_missing, report.checked) == (["legacy-web"], [], ["vapor-vm"], 1)
    assert list(VirtualMachine.objects.values_list("name", flat=True)) == ["vapor-vm"]


def test_import_adopts_the_domain_with_its_disks_nics_and_library_iso(hv, legacy):
    report = vm_sync(hv=hv, adopt=True)
    assert report.adopted == ["legacy-web"] and report.not_adopted == {}
    adopted = VirtualMachine.objects.get(name="legacy-web")
    assert str(adopted.uuid) == parse_definition(hv.domains["legacy-web"].xml).uuid
    hardware = (adopted.memory_mb, adopted.vcpus, adopted.architecture, adopted.machine, adopted.virt_type)
    assert hardware == (2048, 2, "x86_64", "pc-q35-7.2", "kvm")
    assert (adopted.uefi, adopted.secure_boot, adopted.tpm, adopted.autostart) == (True, True, True, True)
    assert (adopted.graphics_type, adopted.graphics_port, adopted.graphics_listen) == ("spice", -1, "0.0.0.0")
    assert (adopted.status, adopted.state, adopted.storage_pool) == ("running", "running", "default")
    assert adopted.serial_log == "/var/log/legacy-web.serial.log" and adopted.template is None
    disks = [(d.order, d.source, d.path, d.volume_name, d.format, d.bus, d.target_dev, d.readonly, d.boot_order, d.created_by_vapor)
             for d in adopted.disks.all()]  # fmt: skip
    assert disks == [
        (0, "existing", str(legacy["root"]), "legacy-web.qcow2", "qcow2", "virtio", "vda", False, 1, False),
        (1, "existing", str(legacy["data"]), "", "raw", "sata", "sdb", True, None, False),
        (2, "existing", str(legacy["logs"]), "legacy-logs.qcow2", "qcow2", "virtio", "vdb", False, None, False),
    ]
    nics = [(n.order, n.type, n.source, n.model, n.mac) for n in adopted.nics.all()]
    assert nics == [(0, "nat", "default", "virtio", "52:54:00:aa:bb:01"), (1, "bridge", "br0", "e1000e", "52:54:00:aa:bb:02")]
    cdrom = CdromAttachment.objects.get(vm=adopted)
    assert (cdrom.iso.name, cdrom.slot, cdrom.target_dev, cdrom.boot_order) == ("debian-12.iso", "primary", "sdc", 2)
    left_out = report.left_out["legacy-web"]
    assert any("vdc" in what and "network" in what for what in left_out)
    assert any("sdd" in what and "not in the ISO library" in what for what in left_out)
    assert any("sde" in what and "empty" in what for what in left_out)
    assert any("'user'" in what for what in left_out)
    [(step, message)] = steps("legacy-web")
    assert step == "adopted" and message.startswith("adopted from the host: 3 disk(s), 2 NIC(s), 1 CD-ROM(s); not kept: ")
    assert vm_sync(hv=hv, adopt=True).unknown == []  # known now


def test_sync_never_deletes_and_deleting_an_adopted_vm_keeps_its_files(hv, legacy):
    vm("vapor-vm", "running")
    before = {path: path.read_bytes() for path in legacy.values()}
    vm_sync(hv=hv, adopt=True)
    vm_sync(hv=hv, adopt=True)
    assert set(hv.domains) == {"legacy-web"}
    assert VirtualMachine.objects.filter(name="vapor-vm", status="missing").exists()
    assert {path: path.read_bytes() for path in legacy.values()} == before
    assert hv.calls["undefine_domain"] == hv.calls["delete_volume"] == 0
    vm_delete(vm=VirtualMachine.objects.get(name="legacy-web"), hv=hv)
    assert hv.calls["delete_volume"] == 0 and {path: path.read_bytes() for path in legacy.values()} == before
    assert IsoImage.objects.filter(name="debian-12.iso").exists()


def test_dry_run_reports_everything_and_writes_nothing(hv, legacy):
    vm("vapor-vm", "running", state="running")
    vm("back-vm", "missing")
    domain(hv, "back-vm", "shutoff")
    counts = [model.objects.count() for model in (VirtualMachine, Disk, NetworkInterface, CdromAttachment, VmEvent)]
    rows = list(VirtualMachine.objects.values())
    report = vm_sync(hv=hv, adopt=True, dry_run=True)
    assert report.dry_run and report.adopted == ["legacy-web"]
    assert (report.marked_missing, report.back, report.checked) == (["vapor-vm"], ["back-vm"], 2)
    assert [model.objects.count() for model in (VirtualMachine, Disk, NetworkInterface, CdromAttachment, VmEvent)] == counts
    assert list(VirtualMachine.objects.values()) == rows


def test_domains_that_cannot_be_adopted_say_why(hv, legacy):
    owner = vm("renamed", "running")
    domain(hv, "renamed-on-host", xml=f"<domain type='kvm'><name>renamed-on-host</name><uuid>{owner.uuid}</uuid></domain>")
    domain(hv, "transient", persistent=False)
    clash = vm("clash-owner", "stopped")
    NetworkInterfaceFactory.create(vm=clash, mac="52:54:00:aa:bb:01")
    report = vm_sync(hv=hv, adopt=True)
    assert report.adopted == []
    assert "UUID belongs to VM 'renamed'" in report.not_adopted["renamed-on-host"]
    assert "transient" in report.not_adopted["transient"]
    assert report.not_adopted["legacy-web"] == "MAC 52:54:00:aa:bb:01 is used by VM 'clash-owner'"
    assert not VirtualMachine.objects.filter(name__in=["renamed-on-host", "transient", "legacy-web"]).exists()


def test_a_disk_outside_any_pool_puts_the_vm_in_the_default_pool(hv, tmp_path):
    (tmp_path / "solo.img").write_bytes(b"x")
    xml = f"""<domain type='qemu'><name>solo</name><uuid>{uuid.uuid4()}</uuid><memory unit='GiB'>1</memory><vcpu>1</vcpu>
      <os><type arch='aarch64' machine='virt'>hvm</type></os>
      <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{tmp_path}/solo.img'/>
      <target dev='sda' bus='scsi'/></disk></devices></domain>"""
    hv.pools["other"] = tmp_path / "elsewhere"
    domain(hv, "solo", "shutoff", xml=xml)
    vm_sync(hv=hv, adopt=True)
    solo = VirtualMachine.objects.get(name="solo")
    assert (solo.storage_pool, solo.status, solo.memory_mb, solo.architecture, solo.machine, solo.graphics_type) == (
        "default", "stopped", 1024, "aarch64", "virt", "none")  # fmt: skip
    assert (solo.uefi, solo.secure_boot, solo.tpm) == (False, False, False)
    assert [(d.path, d.volume_name, d.bus) for d in solo.disks.all()] == [(str(tmp_path / "solo.img"), "", "scsi")]


# --- the command -------------------------------------------------------------------------


def test_command_prints_a_readable_report(hv, legacy, capsys):
    vm("vapor-vm", "running")
    call_command("sync_vms")
    out = capsys.readouterr().out
    assert "Domains on the host that Vapor does not know: 1\n  legacy-web\n  (run with --import to adopt them)" in out
    assert "VMs marked missing (their domain is gone): 1\n  vapor-vm" in out
    assert "Summary: 1 checked, 1 unknown, 0 adopted, 1 newly missing, 0 still missing, 0 back" in out
    call_command("sync_vms", "--import", "--dry-run")
    out = capsys.readouterr().out
    assert out.startswith("Dry run: nothing is written.") and "Would adopt as VMs: 1\n  legacy-web\n    not kept: " in out
    assert not VirtualMachine.objects.filter(name="legacy-web").exists()
    call_command("sync_vms", "--import")
    out = capsys.readouterr().out
    assert "Adopted as VMs: 1\n  legacy-web" in out and "VMs still missing: 1\n  vapor-vm" in out
    assert VirtualMachine.objects.filter(name="legacy-web").exists()


def test_command_turns_a_connection_failure_into_a_command_error(hv):
    hv.fail["list_domains"] = HypervisorError("cannot connect to qemu:///system: Failed to connect socket to '/run/libvirt/libvirt-sock'")
    with pytest.raises(CommandError, match="Failed to connect socket"):
        call_command("sync_vms")
