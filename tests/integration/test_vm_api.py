"""create-enhanced end to end: the API, the django-q2 task, the real libvirtd + QEMU.

The spec's examples 1-3, a linked clone, autostart, rollback after a real
libvirt refusal, and guests that boot the probe ISO and report the disks and
firmware they see.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.bootiso import MARKER, build_probe_iso, parse_probe_output
from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv, wait_for
from tests.support.api import post_create
from tests.support.images import make_image, qemu_img_info, sha256
from tests.support.isos import make_iso
from vms.hypervisor.documents.domain import parse_domain
from vms.models import VirtualMachine
from vms.services import provisioning

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
GIB = 1024**3


def running(name: str) -> bool:
    return virsh("domstate", name, check=False).stdout.strip() == "running"


def test_example_1_simple_vm_runs_and_is_deleted_with_its_volume(vm_api, run_tasks, vm_env: VmEnv):
    response = post_create(
        vm_api, run_tasks, {"name": "simple-vm", "memory": 2048, "vcpus": 2, "disks": [{"size": 20}], "storage_pool": vm_env.pool}
    )
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="simple-vm")
    assert vm.status == "running", vm.error
    assert running("simple-vm")
    volume = vm_env.pool_dir / "simple-vm-disk0.qcow2"
    info = qemu_img_info(volume, "-f", "qcow2", "-U")
    assert info["virtual-size"] == 20 * GIB and info["actual-size"] < 10 * 1024**2  # thin
    detail = vm_api.get(f"/api/v1/virtualmachines/{vm.pk}").json()
    assert detail["state"] == "running" and detail["graphics"]["port"] >= 5900  # the port libvirt assigned
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}").status_code == 204
    assert virsh("dominfo", "simple-vm", check=False).returncode != 0
    assert not volume.exists()


def test_example_2_windows_uefi_secure_boot_tpm_two_cdroms(vm_api, run_tasks, vm_env: VmEnv):
    make_iso(vm_env.isos / "windows-11.iso", label="CCCOMA_X64FRE_EN-US_DV9", boot="uefi")
    make_iso(vm_env.isos / "virtio-win-drivers.iso", label="virtio-win-0.1.240")
    payload = {
        "name": "windows-vm", "memory": 8192, "vcpus": 4,
        "disks": [{"size": 60, "bus": "sata", "boot_order": 1}, {"size": 100, "bus": "sata"}],
        "iso_path": "windows-11.iso", "secondary_iso": "virtio-win-drivers.iso",
        "os_type": "windows", "os_variant": "win11", "uefi": True, "secure_boot": True, "tpm": True,
        "graphics": {"type": "vnc", "port": -1, "password": "s3cret"}, "storage_pool": vm_env.pool,
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="windows-vm")
    assert vm.status == "running", vm.error
    live = parse_domain(virsh("dumpxml", "windows-vm").stdout)
    assert live.loader_secure and live.loader.endswith(".fd") and live.smm
    assert (live.tpm_model, live.tpm_version) == ("tpm-crb", "2.0")
    cdroms = [d for d in live.disks if d.device == "cdrom"]
    assert [(c.target_dev, c.bus, c.readonly, Path(c.source).name) for c in cdroms] == [
        ("sdc", "sata", True, "windows-11.iso"),
        ("sdd", "sata", True, "virtio-win-drivers.iso"),
    ]
    assert [(d.target_dev, d.bus, d.format) for d in live.disks if d.device == "disk"] == [
        ("sda", "sata", "qcow2"),
        ("sdb", "sata", "qcow2"),
    ]
    assert "s3cret" not in virsh("dumpxml", "windows-vm").stdout and "s3cret" in virsh("dumpxml", "--security-info", "windows-vm").stdout
    assert [c["resolved_by"] for c in response.json()["cdroms"]] == ["filename", "filename"]


def test_example_3_clone_existing_disks_and_two_bridges(vm_api, run_tasks, vm_env: VmEnv, bridges: list[str]):
    base = make_image(vm_env.disks / "ubuntu-dev-base.qcow2")
    projects = make_image(vm_env.disks / "projects.qcow2")
    docs = make_image(vm_env.disks / "documentation.qcow2")
    before = {p: sha256(p) for p in (base, docs)}
    payload = {
        "name": "dev-vm", "memory": 16384, "vcpus": 8,
        "disks": [{"clone_from": str(base), "boot_order": 1}, {"path": str(projects), "readonly": False},
                  {"path": str(docs), "readonly": True}],
        "networks": [{"type": "bridge", "source": bridges[0]}, {"type": "bridge", "source": bridges[1]}],
        "storage_pool": vm_env.pool,
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="dev-vm")
    assert vm.status == "running", vm.error
    live_xml = virsh("dumpxml", "dev-vm").stdout
    live = parse_domain(live_xml)
    assert [(d.target_dev, d.source, d.readonly) for d in live.disks] == [
        ("vda", str(vm_env.pool_dir / "dev-vm-disk0.qcow2"), False),
        ("vdb", str(projects), False),
        ("vdc", str(docs), True),
    ]
    assert all(f"<source bridge='{b}'" in live_xml for b in bridges)
    assert qemu_img_info(vm_env.pool_dir / "dev-vm-disk0.qcow2", "-f", "qcow2", "-U").get("backing-filename") is None  # a full copy
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}").status_code == 204
    assert projects.exists() and docs.exists() and base.exists()  # never deleted
    assert {p: sha256(p) for p in (base, docs)} == before


def test_linked_clone_is_an_overlay_backed_by_the_template(vm_api, run_tasks, vm_env: VmEnv):
    template = make_image(vm_env.disks / "template.qcow2")
    before = sha256(template)
    payload = {
        "name": "linked",
        "memory": 512,
        "vcpus": 1,
        "disks": [{"clone_from": str(template), "linked": True}],
        "storage_pool": vm_env.pool,
    }
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get(name="linked").status == "running"
    overlay = qemu_img_info(vm_env.pool_dir / "linked-disk0.qcow2", "-f", "qcow2", "-U")
    assert overlay["backing-filename"] == str(template)
    assert overlay["backing-filename-format"] == "qcow2"
    assert sha256(template) == before


def test_autostart_is_what_libvirt_reports(vm_api, run_tasks, vm_env: VmEnv):
    for name, autostart in (("auto-on", True), ("auto-off", False)):
        response = post_create(
            vm_api, run_tasks, {"name": name, "memory": 256, "vcpus": 1, "autostart": autostart, "graphics": {"type": "none"}}
        )
        assert response.status_code == 202, response.json()
        assert VirtualMachine.objects.get(name=name).status == "running"
        info = virsh("dominfo", name).stdout
        assert ("Autostart:      enable" in info) is autostart
        assert ("Autostart:      disable" in info) is not autostart


def test_a_libvirt_refusal_at_define_rolls_back_everything(vm_api, run_tasks, vm_env: VmEnv, monkeypatch):
    template = make_image(vm_env.disks / "template.qcow2")
    existing = make_image(vm_env.disks / "data.qcow2")
    before = {p: sha256(p) for p in (template, existing)}
    real_xml = provisioning.domain_xml
    # Something libvirt itself refuses (its schema has no such bus), so the error is libvirt's own.
    monkeypatch.setattr(provisioning, "domain_xml", lambda spec, **kw: real_xml(spec, **kw).replace('bus="virtio"', 'bus="nonsense"'))
    payload = {"name": "rollback", "memory": 512, "vcpus": 1, "storage_pool": vm_env.pool,
               "disks": [{"size": 1}, {"clone_from": str(template)}, {"path": str(existing)}]}  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202
    vm = VirtualMachine.objects.get(name="rollback")
    assert vm.status == "failed"
    assert vm.error.startswith("define domain failed: XML document failed to validate against schema")  # libvirt's words
    assert [(e.step.split(" ")[0], e.status) for e in vm.events.exclude(step="accepted")] == [
        ("create", "done"), ("clone", "done"), ("define", "failed"), ("clone", "undone"), ("create", "undone"),
    ]  # fmt: skip
    assert vm_env.volumes() == set()  # two of three volumes existed; none is left
    assert virsh("dominfo", "rollback", check=False).returncode != 0
    assert {p: sha256(p) for p in (template, existing)} == before


@pytest.fixture
def probe_iso(vm_env: VmEnv) -> Path:
    """The probe ISO, copied where QEMU may read it (libvirt chowns what it boots)."""
    target = vm_env.isos / "vapor-probe.iso"
    shutil.copyfile(build_probe_iso(), target)
    target.chmod(0o644)
    return target


def boot_and_read(vm_api, run_tasks, vm_env: VmEnv, payload: dict):
    response = post_create(
        vm_api, run_tasks, {"memory": 512, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": vm_env.pool, **payload}
    )
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name=payload["name"])
    assert vm.status == "running", vm.error
    log = vm_env.serial / f"{vm.name}.serial.log"
    wait_for(lambda: log.exists() and MARKER in log.read_text(errors="replace"), 300, f"{MARKER} on {log}")
    wait_for(lambda: not running(vm.name), 30, "the guest to power off")
    return vm, parse_probe_output(log.read_text(errors="replace"))


@pytest.mark.slow
def test_guest_sees_the_requested_disks_bios(vm_api, run_tasks, vm_env: VmEnv, probe_iso: Path):
    readonly = make_image(vm_env.disks / "reference.img", "64M", "raw")
    vm, report = boot_and_read(
        vm_api,
        run_tasks,
        vm_env,
        {
            "name": "probe-bios",
            "iso_path": str(probe_iso),
            "disks": [{"size": 1, "bus": "sata"}, {"path": str(readonly), "format": "raw", "readonly": True}],
        },
    )
    assert report.complete and report.firmware == "bios"
    assert sorted(d.name for d in report.disks) == ["sda", "sr0", "vda"]
    assert (report.disk("sda").bytes, report.disk("sda").ro) == (GIB, False)
    assert (report.disk("vda").bytes, report.disk("vda").ro) == (64 * 1024**2, True)
    assert report.disk("sr0").ro and report.disk("sr0").removable and report.disk("sr0").bytes == probe_iso.stat().st_size
    assert vm_api.get(f"/api/v1/virtualmachines/{vm.pk}").json()["status"] == "stopped"


@pytest.mark.slow
def test_guest_sees_uefi_secure_boot_and_its_disks(vm_api, run_tasks, vm_env: VmEnv, probe_iso: Path):
    _, report = boot_and_read(
        vm_api,
        run_tasks,
        vm_env,
        {
            "name": "probe-sb",
            "iso_path": str(probe_iso),
            "uefi": True,
            "secure_boot": True,
            "tpm": True,
            "disks": [{"size": 2, "bus": "virtio"}, {"size": 1, "bus": "scsi"}],
        },
    )
    assert report.complete and (report.firmware, report.secure_boot) == ("efi", True)
    # The guest names devices itself: the virtio-scsi disk is its sda, the SATA CD-ROM its sr0.
    assert sorted(d.name for d in report.disks) == ["sda", "sr0", "vda"]
    assert (report.disk("vda").bytes, report.disk("sda").bytes) == (2 * GIB, GIB)
    assert not report.disk("vda").ro and not report.disk("sda").ro and report.disk("sr0").ro
