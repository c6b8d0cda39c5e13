"""create-enhanced against the in-memory hypervisor: the request, the plan, the errors."""

from __future__ import annotations

import pytest
from django_q.models import Task

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from tests.support.api import CREATE_URL, post_create
from tests.support.images import make_image, sha256
from tests.support.isos import make_iso, register_ready
from vms.hypervisor.documents.domain import parse_domain
from vms.models import Disk, VirtualMachine

pytestmark = pytest.mark.django_db


def nothing_created(hv, before_isos: int = 0) -> None:
    assert not VirtualMachine.objects.exists()
    assert IsoImage.objects.count() == before_isos
    assert list(hv.pool_dir.iterdir()) == []
    assert hv.domains == {}


# --- the spec's examples ----------------------------------------------------------


def test_example_1_simple_vm(vm_api, hv, run_tasks):
    response = post_create(vm_api, run_tasks, {"name": "simple-vm", "memory": 2048, "vcpus": 2, "disks": [{"size": 20}]})
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"] == f"http://testserver/api/v1/virtualmachines/{body['id']}"
    assert body["status"] == "provisioning"
    assert body["disks"] == [
        {"order": 0, "source": "new", "path": str(hv.pool_dir / "simple-vm-disk0.qcow2"), "size": 20, "format": "qcow2",
         "bus": "virtio", "target_dev": "vda", "boot_order": 1, "readonly": False, "linked": False, "source_path": ""},
    ]  # fmt: skip
    assert body["networks"][0]["type"] == "nat" and body["networks"][0]["source"] == "default"
    assert body["networks"][0]["mac"].startswith("52:54:00:")
    assert body["graphics"] == {"type": "vnc", "port": -1, "listen": "127.0.0.1", "password_set": False}
    vm = VirtualMachine.objects.get()
    assert vm.status == "running", vm.error
    live = parse_domain(hv.domains["simple-vm"].xml)
    assert [(d.target_dev, d.bus, d.format) for d in live.disks] == [("vda", "virtio", "qcow2")]
    assert hv.domains["simple-vm"].state == "running"
    assert [e.step for e in vm.events.all()] == [
        "accepted",
        "create volume simple-vm-disk0.qcow2",
        "define domain",
        "start domain",
        "record ISO use",
    ]


def test_example_2_windows_vm(vm_api, hv, run_tasks, iso_dirs):
    win = register_ready(make_iso(iso_dirs.search[0] / "windows-11.iso"))
    drivers = make_iso(iso_dirs.search[1] / "virtio-win-drivers.iso")  # not in the library yet
    payload = {
        "name": "windows-vm", "memory": 8192, "vcpus": 4,
        "disks": [{"size": 60, "bus": "sata", "boot_order": 1}, {"size": 100, "bus": "sata"}],
        "iso_path": "windows-11.iso", "secondary_iso": "virtio-win-drivers.iso",
        "os_type": "windows", "os_variant": "win11", "uefi": True, "secure_boot": True, "tpm": True,
        "graphics": {"type": "vnc", "port": -1, "password": "s3cret"},
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert [(d["target_dev"], d["bus"], d["boot_order"]) for d in body["disks"]] == [("sda", "sata", 1), ("sdb", "sata", None)]
    assert [(c["slot"], c["iso_id"], c["resolved_by"], c["target_dev"], c["boot_order"]) for c in body["cdroms"]] == [
        ("primary", win.pk, "name", "sdc", 2),
        ("secondary", IsoImage.objects.get(path=str(drivers)).pk, "filename", "sdd", None),
    ]
    assert "s3cret" not in response.content.decode() and body["graphics"]["password_set"] is True
    live = parse_domain(hv.domains["windows-vm"].xml)
    assert (live.firmware, live.tpm_version) == ("efi", "2.0")
    assert [d.device for d in live.disks] == ["disk", "disk", "cdrom", "cdrom"]
    win.refresh_from_db()
    assert win.use_count == 1 and win.last_used is not None
    assert IsoImage.objects.get(path=str(drivers)).use_count == 1


def test_example_3_existing_and_cloned_disks_with_two_bridges(vm_api, hv, run_tasks, disk_root):
    base = make_image(disk_root / "ubuntu-dev-base.qcow2")
    projects = make_image(disk_root / "projects.qcow2")
    docs = make_image(disk_root / "documentation.qcow2")
    before = {p: sha256(p) for p in (base, projects, docs)}
    payload = {
        "name": "dev-vm", "memory": 16384, "vcpus": 8,
        "disks": [{"clone_from": str(base), "boot_order": 1}, {"path": str(projects), "readonly": False},
                  {"path": str(docs), "readonly": True}],
        "networks": [{"type": "bridge", "source": "br0"}, {"type": "bridge", "source": "br-internal"}],
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    disks = response.json()["disks"]
    assert [(d["source"], d["target_dev"], d["readonly"]) for d in disks] == [
        ("clone", "vda", False),
        ("existing", "vdb", False),
        ("existing", "vdc", True),
    ]
    assert disks[1]["path"] == str(projects) and disks[0]["source_path"] == str(base)
    assert VirtualMachine.objects.get().status == "running"
    assert [n["source"] for n in response.json()["networks"]] == ["br0", "br-internal"]
    assert {p: sha256(p) for p in (base, projects, docs)} == before


def test_legacy_fields_and_endpoint(vm_api, hv, run_tasks, iso_dirs):
    register_ready(make_iso(iso_dirs.search[0] / "ubuntu.iso"), name="ubuntu-22.04")
    legacy = {"name": "my-vm", "memory": 4096, "vcpus": 2, "disk_size": 50, "iso_path": "ubuntu-22.04"}
    response = post_create(vm_api, run_tasks, legacy, url="/api/v1/virtualmachines/")
    assert response.status_code == 202, response.json()
    assert [(d["size"], d["target_dev"]) for d in response.json()["disks"]] == [(50, "vda")]
    assert response.json()["cdroms"][0]["target_dev"] == "sda"
    response = post_create(vm_api, run_tasks, {**legacy, "name": "my-vm-2"})
    assert response.status_code == 202 and response.json()["disks"][0]["size"] == 50


def test_dry_run_shows_plan_and_masked_xml_and_creates_nothing(vm_api, hv, run_tasks, iso_dirs):
    make_iso(iso_dirs.search[0] / "fresh.iso")
    payload = {
        "name": "dry",
        "memory": 1024,
        "vcpus": 1,
        "disks": [{"size": 5}],
        "iso_path": "fresh.iso",
        "graphics": {"password": "topsecr"},
    }
    response = post_create(vm_api, run_tasks, payload, url=CREATE_URL + "?dry_run=true")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["plan"] == ["create volume dry-disk0.qcow2", "define domain", "start domain", "record ISO use"]
    assert "<domain" in body["domain_xml"] and "topsecr" not in body["domain_xml"] and "********" in body["domain_xml"]
    assert body["vm"]["cdroms"][0]["resolved_by"] == "filename"
    nothing_created(hv)
    assert not Task.objects.exists()


def test_vnc_password_is_never_returned_logged_or_queued_in_clear(vm_api, hv, run_tasks, caplog):
    response = post_create(vm_api, run_tasks, {"name": "pw", "memory": 512, "vcpus": 1, "graphics": {"password": "p4ssw0rd"}})
    assert response.status_code == 202
    assert "p4ssw0rd" not in response.content.decode()
    assert 'passwd="p4ssw0rd"' in hv.domains["pw"].xml  # libvirt got it
    vm = VirtualMachine.objects.get()
    assert vm.graphics_password_encrypted == "" and vm.graphics_password_set  # forgotten once libvirt holds it
    assert all("p4ssw0rd" not in str(t.args) + str(t.kwargs) for t in Task.objects.all())
    assert "p4ssw0rd" not in caplog.text
    assert "p4ssw0rd" not in vm_api.get(f"/api/v1/virtualmachines/{vm.pk}").content.decode()


# --- bad input: status, field, nothing created ---------------------------------


BASE = {"name": "bad", "memory": 1024, "vcpus": 1}


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"name": "has space"}, 400, "name"),
        ({"name": "x" * 65}, 400, "name"),
        ({"name": "<evil>"}, 400, "name"),
        ({"memory": 32}, 400, "memory"),
        ({"vcpus": 0}, 400, "vcpus"),
        ({"vcpus": 300}, 400, "vcpus"),
        ({"disks": [{"size": 1, "path": "/x"}]}, 400, "disks.0"),
        ({"disks": [{}]}, 400, "disks.0"),
        ({"disks": [{"size": 0}]}, 400, "disks.0.size"),
        ({"disks": [{"size": 1, "format": "vmdk"}]}, 400, "disks.0.format"),
        ({"disks": [{"size": 1, "bus": "usb"}]}, 400, "disks.0.bus"),
        ({"disks": [{"size": 1, "boot_order": 1}, {"size": 1, "boot_order": 1}]}, 400, "disks.1.boot_order"),
        ({"disks": [{"size": 1, "boot_order": 0}]}, 400, "disks.0.boot_order"),
        ({"disks": [{"size": 1, "readonly": True}]}, 400, "disks.0.readonly"),
        ({"disks": [{"size": 1, "linked": True}]}, 400, "disks.0.linked"),
        ({"disks": [{"size": 1, "colour": "red"}]}, 400, "disks.0.colour"),
        ({"disks": [{"path": 'json:{"file":{"filename":"/etc/shadow"}}'}]}, 400, "disks.0.path"),
        ({"disks": [{"path": "nbd:127.0.0.1:1"}]}, 400, "disks.0.path"),
        ({"disks": [{"path": "/etc/passwd"}]}, 400, "disks.0.path"),
        ({"disks": [{"path": "/dev/sda"}]}, 400, "disks.0.path"),
        ({"disks": [{"clone_from": "/etc/shadow"}]}, 400, "disks.0.clone_from"),
        ({"os_variant": "win12"}, 400, "os_variant"),
        ({"architecture": "s390x"}, 400, "architecture"),
        ({"secure_boot": True}, 400, "secure_boot"),
        ({"networks": [{"type": "nat", "source": "nope"}]}, 404, "networks.0.source"),
        ({"networks": [{"type": "bridge", "source": "br9"}]}, 404, "networks.0.source"),
        ({"networks": [{"model": "ne2k"}]}, 400, "networks.0.model"),
        ({"networks": [{"type": "macvtap"}]}, 400, "networks.0.type"),
        ({"graphics": {"type": "rdp"}}, 400, "graphics.type"),
        ({"graphics": {"port": 80}}, 400, "graphics.port"),
        ({"graphics": {"password": "123456789"}}, 400, "graphics.password"),
        ({"graphics": {"type": "none", "password": "x"}}, 400, "graphics.password"),
        ({"storage_pool": "ssd"}, 404, "storage_pool"),
        ({"disk_size": 10, "disks": [{"size": 1}]}, 400, "disks"),
        ({"disk_size": 10, "disk_path": "/x"}, 400, "disk_path"),
        ({"template": "ubuntu-22.04"}, 404, "template"),
        ({"iso_path": "nothing.iso"}, 404, "iso_path"),
        ({"secondary_iso": "iso-0123456789ab"}, 404, "secondary_iso"),
        ({"unknown": 1}, 400, "unknown"),
        ({"uefi": True, "secure_boot": True, "disks": [{"size": 1, "bus": "ide"}]}, 400, "disks.0.bus"),
    ],
)
def test_bad_input_is_refused_with_the_field_named_and_nothing_created(vm_api, hv, run_tasks, iso_dirs, disk_root, change, status, field):
    response = post_create(vm_api, run_tasks, {**BASE, **change})
    assert response.status_code == status, response.json()
    assert response.json()["field"] == field, response.json()
    assert response.json()["detail"]
    nothing_created(hv)


def test_missing_disk_path_inside_the_roots_is_404(vm_api, hv, run_tasks, disk_root):
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"path": str(disk_root / "missing.qcow2")}]})
    assert (response.status_code, response.json()["field"]) == (404, "disks.0.path")
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"clone_from": str(disk_root / "missing.qcow2")}]})
    assert (response.status_code, response.json()["field"]) == (404, "disks.0.clone_from")
    nothing_created(hv)


def test_read_only_sata_disk_gets_a_clear_answer(vm_api, hv, run_tasks, disk_root):
    data = make_image(disk_root / "data.qcow2")
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"path": str(data), "bus": "sata", "readonly": True}]})
    assert (response.status_code, response.json()["field"]) == (400, "disks.0.bus")
    assert "read-only disk needs bus virtio or scsi" in response.json()["detail"]


def test_image_whose_backing_file_leaves_the_roots_is_refused(vm_api, hv, run_tasks, disk_root, tmp_path):
    outside = make_image(tmp_path / "host-file.qcow2")
    sneaky = make_image(disk_root / "sneaky.qcow2", "64M", "qcow2", "-b", str(outside), "-F", "qcow2")
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"path": str(sneaky)}]})
    assert (response.status_code, response.json()["field"]) == (400, "disks.0.path")
    nothing_created(hv)


def test_raw_image_declared_as_qcow2_is_refused_not_probed(vm_api, hv, run_tasks, disk_root):
    raw = make_image(disk_root / "disk.img", "16M", "raw")
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"path": str(raw)}]})
    assert (response.status_code, response.json()["field"]) == (400, "disks.0.path")
    ok = post_create(vm_api, run_tasks, {**BASE, "disks": [{"path": str(raw), "format": "raw"}]})
    assert ok.status_code == 202, ok.json()


def test_name_taken_in_vapor_or_on_the_host_is_409(vm_api, hv, run_tasks):
    assert post_create(vm_api, run_tasks, {**BASE, "name": "taken"}).status_code == 202
    again = post_create(vm_api, run_tasks, {**BASE, "name": "taken"})
    assert (again.status_code, again.json()["field"]) == (409, "name")
    hv.domains["foreign"] = hv.domains["taken"]
    clash = post_create(vm_api, run_tasks, {**BASE, "name": "foreign"})
    assert (clash.status_code, clash.json()["field"]) == (409, "name")
    assert VirtualMachine.objects.count() == 1


def test_ambiguous_and_not_ready_isos_are_409(vm_api, hv, run_tasks, iso_dirs):
    make_iso(iso_dirs.search[0] / "dup.iso")
    make_iso(iso_dirs.search[1] / "dup.iso")
    response = post_create(vm_api, run_tasks, {**BASE, "iso_path": "dup.iso"})
    assert (response.status_code, response.json()["field"], response.json()["code"]) == (409, "iso_path", "iso_ambiguous")
    pending = iso_register_path(path=str(make_iso(iso_dirs.search[2] / "pending.iso")), meta=IsoMetadata())  # hashing
    response = post_create(vm_api, run_tasks, {**BASE, "secondary_iso": pending.pk})
    assert (response.status_code, response.json()["code"]) == (409, "iso_not_ready")
    assert not VirtualMachine.objects.exists()


def test_an_iso_registered_on_the_way_is_rolled_back_with_a_refused_request(vm_api, hv, run_tasks, iso_dirs):
    make_iso(iso_dirs.search[0] / "new.iso")
    response = post_create(vm_api, run_tasks, {**BASE, "iso_path": "new.iso", "networks": [{"source": "missing"}]})
    assert response.status_code == 404
    nothing_created(hv)


def test_existing_disk_in_read_write_use_by_another_vm_is_409(vm_api, hv, run_tasks, disk_root):
    shared = make_image(disk_root / "shared.qcow2")
    assert post_create(vm_api, run_tasks, {**BASE, "name": "a", "disks": [{"path": str(shared)}]}).status_code == 202
    response = post_create(vm_api, run_tasks, {**BASE, "name": "b", "disks": [{"path": str(shared), "readonly": True}]})
    assert (response.status_code, response.json()["code"]) == (409, "disk_in_use")
    assert Disk.objects.filter(path=str(shared)).count() == 1


def test_ide_disks_get_the_pc_machine_and_serial_logs_go_to_the_configured_dir(vm_api, hv, run_tasks, settings, tmp_path):
    import dataclasses

    settings.VAPOR = dataclasses.replace(settings.VAPOR, serial_log_dir=tmp_path / "serial")
    response = post_create(vm_api, run_tasks, {**BASE, "name": "old", "disks": [{"size": 1, "bus": "ide"}]})
    assert response.status_code == 202, response.json()
    assert response.json()["disks"][0]["target_dev"] == "hda"
    vm = VirtualMachine.objects.get()
    assert (vm.machine, vm.serial_log) == ("pc", str(tmp_path / "serial" / "old.serial.log"))
    assert 'machine="pc"' in hv.domains["old"].xml and "old.serial.log" in hv.domains["old"].xml
