"""VM templates against the in-memory hypervisor: the API, the override rules, delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_delete, iso_register_path
from tests.support.api import CREATE_URL, post_create
from tests.support.factories import VmTemplateFactory
from tests.support.images import make_image
from tests.support.isos import make_iso
from vaporsite.errors import Conflict
from vms.hypervisor.documents.domain import parse_domain
from vms.models import TemplateDisk, VirtualMachine, VmTemplate
from vms.services.requests import DiskRequest
from vms.services.template_apply import merge_disk

pytestmark = pytest.mark.django_db
TEMPLATES = "/api/v1/virtualmachines/templates"
GIB = 1024**3


@pytest.fixture
def ubuntu(vm_api, hv, base_image: Path, iso_dirs) -> dict:
    """The spec's example 4 template: Ubuntu 22.04, UEFI, a clone of a base image."""
    iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "ubuntu-22.04.iso")), meta=IsoMetadata(), digests=None)
    IsoImage.objects.filter(pk=iso.pk).update(status="ready")
    payload = {
        "name": "ubuntu-22.04", "description": "Ubuntu server, cloud-init ready", "memory": 2048, "vcpus": 2,
        "os_variant": "ubuntu22.04", "uefi": True, "secure_boot": False, "tpm": True, "graphics_type": "spice",
        "iso": "ubuntu-22.04.iso", "networks": [{"type": "nat", "source": "default"}],
        "disks": [{"clone_from": str(base_image), "bus": "virtio", "boot_order": 1}],
    }  # fmt: skip
    response = vm_api.post(TEMPLATES, payload, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


# --- the API ------------------------------------------------------------------------


def test_template_round_trips_through_the_api(vm_api, ubuntu, base_image):
    assert ubuntu["os_type"] == "linux"  # derived from the variant
    assert ubuntu["iso"] == "ubuntu-22.04.iso" and ubuntu["iso_id"].startswith("iso-")
    assert ubuntu["disks"] == [{"clone_from": str(base_image), "linked": False, "format": "qcow2", "bus": "virtio", "boot_order": 1}]
    assert ubuntu["vm_count"] == 0
    listed = vm_api.get(TEMPLATES).json()["templates"]
    assert [t["name"] for t in listed] == ["ubuntu-22.04"]
    assert vm_api.get(f"{TEMPLATES}/ubuntu-22.04").json() == ubuntu


def test_patch_changes_only_given_fields_and_replaces_lists(vm_api, ubuntu):
    response = vm_api.patch(f"{TEMPLATES}/ubuntu-22.04", {"memory": 4096, "disks": [{"size": 30}]}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["memory"] == 4096 and body["vcpus"] == 2 and body["uefi"] is True and body["graphics_type"] == "spice"
    assert body["disks"] == [{"size": 30, "linked": False, "format": "qcow2", "bus": "virtio"}]
    assert body["networks"] == ubuntu["networks"]
    assert TemplateDisk.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"name": "bad name!"}, 400, "name"),
        ({"name": "t", "memory": 8}, 400, "memory"),
        ({"name": "t", "os_variant": "ubuntu99.99"}, 400, "os_variant"),
        ({"name": "t", "secure_boot": True}, 400, "secure_boot"),
        ({"name": "t", "disks": [{}]}, 400, "disks.0"),
        ({"name": "t", "disks": [{"size": 0}]}, 400, "disks.0.size"),
        ({"name": "t", "disks": [{"clone_from": "/etc/passwd"}]}, 400, "disks.0.clone_from"),
        ({"name": "t", "disks": [{"clone_from": "json:{}"}]}, 400, "disks.0.clone_from"),
        ({"name": "t", "disks": [{"size": 10, "linked": True}]}, 400, "disks.0.linked"),
        ({"name": "t", "disks": [{"size": 10, "path": "/x"}]}, 400, "disks.0.path"),
        ({"name": "t", "iso": "no-such.iso"}, 404, "iso"),
        ({"name": "t", "unknown": 1}, 400, "unknown"),
    ],
)
def test_bad_templates_are_refused_and_leave_nothing(vm_api, hv, disk_root, iso_dirs, payload, status, field):
    response = vm_api.post(TEMPLATES, payload, format="json")
    assert response.status_code == status, response.json()
    assert field in response.json().get("errors", {}) or response.json().get("field") == field, response.json()
    assert not VmTemplate.objects.exists()


def test_clone_source_smaller_size_is_refused(vm_api, hv, base_image):
    payload = {"name": "t", "disks": [{"clone_from": str(base_image), "size": 4}]}
    response = vm_api.post(TEMPLATES, payload, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == "disks.0.size"
    assert "only grow" in response.json()["detail"]


def test_duplicate_name_is_409(vm_api, ubuntu):
    response = vm_api.post(TEMPLATES, {"name": "ubuntu-22.04"}, format="json")
    assert response.status_code == 409 and response.json()["field"] == "name"


def test_unknown_template_item_is_404(vm_api, hv):
    assert vm_api.get(f"{TEMPLATES}/nope").status_code == 404
    assert vm_api.delete(f"{TEMPLATES}/nope").status_code == 404


def test_template_endpoints_need_permissions(anon_api, nobody_api, viewer_api, db):
    VmTemplateFactory.create(name="t")
    assert anon_api.get(TEMPLATES).status_code == 401
    assert nobody_api.get(TEMPLATES).status_code == 403
    assert nobody_api.post(TEMPLATES, {"name": "x"}, format="json").status_code == 403
    assert nobody_api.patch(f"{TEMPLATES}/t", {"memory": 1024}, format="json").status_code == 403
    assert nobody_api.delete(f"{TEMPLATES}/t").status_code == 403
    assert VmTemplate.objects.get().memory_mb == 2048


# --- creating VMs from a template ----------------------------------------------------


def test_example_4_template_with_additional_storage(vm_api, hv, run_tasks, ubuntu, base_image):
    payload = {
        "name": "app-server", "memory": 4096, "vcpus": 4, "template": "ubuntu-22.04",
        "disks": [{"size": 50}, {"size": 500}], "networks": [{"type": "bridge", "source": "br0"}],
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["template"] == "ubuntu-22.04"
    # The request's own values win ...
    assert (body["memory"], body["vcpus"]) == (4096, 4)
    assert [(n["type"], n["source"]) for n in body["networks"]] == [("bridge", "br0")]
    # ... the template supplies the rest.
    assert (body["os_type"], body["os_variant"], body["uefi"], body["secure_boot"], body["tpm"]) == (
        "linux",
        "ubuntu22.04",
        True,
        False,
        True,
    )
    assert body["graphics"]["type"] == "spice"
    assert [c["iso_name"] for c in body["cdroms"]] == ["ubuntu-22.04.iso"]
    first, second = body["disks"]
    assert (first["source"], first["source_path"], first["size"], first["boot_order"]) == ("clone", str(base_image), 50, 1)
    assert (second["source"], second["size"]) == ("new", 500)
    vm = VirtualMachine.objects.get()
    assert vm.status == "running", vm.error
    assert vm.template is not None and vm.template.name == "ubuntu-22.04"
    assert hv.clone_capacities == {"app-server-disk0.qcow2": 50 * GIB}  # the clone is grown to 50 GB
    live = parse_domain(hv.domains["app-server"].xml)
    assert [d.target_dev for d in live.disks] == ["vda", "vdb", "sda"]  # sda: the template's ISO
    assert "from template ubuntu-22.04" in vm.events.first().message  # type: ignore[union-attr]


def test_template_alone_supplies_memory_vcpus_disks_and_networks(vm_api, hv, run_tasks, ubuntu):
    response = post_create(vm_api, run_tasks, {"name": "bare", "template": "ubuntu-22.04"})
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["memory"], body["vcpus"]) == (2048, 2)
    assert [(d["source"], d["size"]) for d in body["disks"]] == [("clone", None)]
    assert [(n["type"], n["source"]) for n in body["networks"]] == [("nat", "default")]
    assert hv.clone_capacities == {"bare-disk0.qcow2": None}  # not grown


def test_smaller_size_on_a_cloned_disk_is_400_and_leaves_nothing(vm_api, hv, run_tasks, ubuntu):
    response = post_create(vm_api, run_tasks, {"name": "small", "template": "ubuntu-22.04", "disks": [{"size": 2}]})
    assert response.status_code == 400
    assert response.json()["field"] == "disks.0.size"
    assert not VirtualMachine.objects.exists() and hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_request_fields_override_field_by_field(vm_api, hv, run_tasks, ubuntu, disk_root):
    other = make_image(disk_root / "other.qcow2", "1G")
    payload = {
        "name": "custom", "template": "ubuntu-22.04", "uefi": False, "tpm": False, "iso_path": None,
        "graphics": {"password": "pw"},
        "disks": [{"bus": "sata"}, {"clone_from": str(other), "linked": True}],
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["uefi"], body["tpm"], body["os_variant"]) == (False, False, "ubuntu22.04")
    assert body["cdroms"] == []  # iso_path given as null: no CD-ROM
    assert body["graphics"]["type"] == "spice" and body["graphics"]["password_set"] is True
    first, second = body["disks"]
    assert (first["source"], first["bus"], first["boot_order"]) == ("clone", "sata", 1)  # bus overridden, the rest kept
    assert (second["source"], second["source_path"], second["linked"]) == ("clone", str(other), True)


def test_unknown_template_is_404_naming_the_field(vm_api, hv, run_tasks, ubuntu):
    response = post_create(vm_api, run_tasks, {"name": "x", "template": "debian-13"})
    assert response.status_code == 404
    assert response.json()["field"] == "template"
    assert "ubuntu-22.04" in response.json()["detail"]  # the known templates are listed
    assert not VirtualMachine.objects.exists()


def test_memory_is_required_without_a_template(vm_api, hv, run_tasks):
    response = post_create(vm_api, run_tasks, {"name": "x", "vcpus": 1})
    assert response.status_code == 400 and "memory" in response.json()["errors"]


def test_dry_run_with_template_shows_the_merged_plan(vm_api, hv, ubuntu):
    payload = {"name": "preview", "template": "ubuntu-22.04", "disks": [{"size": 20}, {"size": 5}]}
    response = vm_api.post(CREATE_URL + "?dry_run=true", payload, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["vm"]["template"] == "ubuntu-22.04"
    assert 'firmware="efi"' in body["domain_xml"]  # UEFI from the template
    assert not VirtualMachine.objects.exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # size on a cloned template disk: grow the clone
        (DiskRequest(size=50, given=frozenset({"size"})), DiskRequest(size=50, clone_from="/b.qcow2", linked=True, bus="sata")),
        # another source replaces the template's, but keeps the other fields
        (DiskRequest(path="/d.qcow2", given=frozenset({"path"})), DiskRequest(path="/d.qcow2", bus="sata")),
        (
            DiskRequest(size=9, clone_from="/c.qcow2", given=frozenset({"clone_from", "size"})),
            DiskRequest(size=9, clone_from="/c.qcow2", bus="sata"),
        ),
        # nothing given: the template disk as it is
        (DiskRequest(given=frozenset()), DiskRequest(clone_from="/b.qcow2", linked=True, bus="sata")),
        # given=None (the caller spelled out everything): the override entirely
        (DiskRequest(size=3), DiskRequest(size=3)),
    ],
)
def test_merge_disk_rules(override, expected):
    base = DiskRequest(clone_from="/b.qcow2", linked=True, bus="sata")
    assert merge_disk(base, override) == expected


# --- deleting -------------------------------------------------------------------------


def test_delete_is_409_while_a_vm_uses_it_and_allowed_for_history(vm_api, hv, run_tasks, ubuntu):
    assert post_create(vm_api, run_tasks, {"name": "user", "template": "ubuntu-22.04"}).status_code == 202
    response = vm_api.delete(f"{TEMPLATES}/ubuntu-22.04")
    assert response.status_code == 409
    assert response.json()["code"] == "template_in_use" and response.json()["vms"] == ["user"]
    VirtualMachine.objects.filter(name="user").update(status="failed")  # only history now
    assert vm_api.delete(f"{TEMPLATES}/ubuntu-22.04").status_code == 204
    assert VirtualMachine.objects.get().template is None


def test_iso_of_a_template_cannot_be_deleted(vm_api, ubuntu):
    iso = IsoImage.objects.get(pk=ubuntu["iso_id"])
    with pytest.raises(Conflict, match="template"):
        iso_delete(iso=iso)
    assert vm_api.delete(f"/api/v1/virtualmachines/isos/{iso.pk}").status_code == 409


def test_an_iso_file_is_registered_on_the_way_unless_the_template_is_refused(vm_api, hv, iso_dirs, disk_root):
    make_iso(iso_dirs.search[0] / "fresh.iso")
    bad = {"name": "t", "iso": "fresh.iso", "disks": [{"clone_from": "/etc/passwd"}]}
    assert vm_api.post(TEMPLATES, bad, format="json").status_code == 400
    assert not IsoImage.objects.exists() and not VmTemplate.objects.exists()
    response = vm_api.post(TEMPLATES, {"name": "t", "iso": "fresh.iso"}, format="json")
    assert response.status_code == 201, response.json()
    assert IsoImage.objects.get().name == "fresh.iso" == response.json()["iso"]


def test_template_list_query_count_is_flat(vm_api, hv):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert vm_api.get(TEMPLATES).status_code == 200
        return len(captured.captured_queries)

    def make(n: int) -> None:
        VmTemplateFactory.create_batch(n, disks=1, disks__size_gb=10, nics=1)

    make(2)
    count()  # the first request also loads the user's permissions
    few = count()
    make(20)
    assert count() == few
