"""A delete that says what it does (issue 13, point 4): `vm_delete_plan` names the domain, every file erased
and every file kept; `vm_delete` does exactly that (Keep disks keeps every disk); the VM's delete page and
the list's "Delete the selected VMs" show the plan and ask first, and show the linked-clone refusal
instead of the delete button. On the in-memory hypervisor, whose volumes are real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import User
from django.test import Client

from tests.support.api import create_vm
from tests.support.images import make_image
from tests.support.isos import make_iso, register_ready
from tests.support.projects import join
from vms.models import VirtualMachine
from vms.services.lifecycle import PlannedFile, vm_delete, vm_delete_plan

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/vms/virtualmachine/"


def found(pattern: str, html: str, flags: int = 0) -> str:
    """The first group of `pattern`'s first match in `html` (the test fails when there is none)."""
    match = re.search(pattern, html, flags)
    assert match is not None, pattern
    return match[1]


def delete_page(vm: VirtualMachine) -> str:
    return f"{CHANGELIST}{vm.pk}/delete/"


def paths(files: list[PlannedFile]) -> list[str]:
    return [f.path for f in files]


@pytest.fixture
def simple(vm_api, hv, run_tasks) -> VirtualMachine:
    return create_vm(vm_api, run_tasks, {"name": "web", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})


@pytest.fixture
def mixed(vm_api, hv, run_tasks, disk_root, iso_dirs) -> VirtualMachine:
    """A new volume, a full clone, a linked clone, an existing disk, an ISO, UEFI and a TPM."""
    base = make_image(disk_root / "base.qcow2")
    make_image(disk_root / "data.qcow2")
    register_ready(make_iso(iso_dirs.search[0] / "install.iso"))
    payload = {
        "name": "mixed", "memory": 512, "vcpus": 1, "uefi": True, "tpm": True, "iso_path": "install.iso",
        "disks": [{"size": 1}, {"clone_from": str(base)}, {"clone_from": str(base), "linked": True},
                  {"path": str(disk_root / "data.qcow2")}],
    }  # fmt: skip
    vm = create_vm(vm_api, run_tasks, payload)
    assert vm.status == "running", vm.error
    return vm


# --- the plan ---------------------------------------------------------------------------------------


def test_a_new_volume_is_erased_and_nothing_kept(simple, hv):
    plan = vm_delete_plan(vm=simple)
    volume = str(hv.pool_dir / "web-disk0.qcow2")
    assert (plan.domain, plan.refusal, plan.keep_disks) == ("web", None, False)
    assert plan.erased == [PlannedFile(volume, "disk vda, a volume Vapor created")]
    assert plan.kept == [] and plan.volumes == ["web-disk0.qcow2"]


def test_the_plan_of_new_cloned_and_existing_disks_an_iso_uefi_and_tpm(mixed, hv, disk_root, iso_dirs):
    plan = vm_delete_plan(vm=mixed)
    pool = hv.pool_dir
    assert [(f.path, f.what) for f in plan.erased] == [
        (str(pool / "mixed-disk0.qcow2"), "disk vda, a volume Vapor created"),
        (str(pool / "mixed-disk1.qcow2"), "disk vdb, a clone Vapor made"),
        (str(pool / "mixed-disk2.qcow2"), "disk vdc, a clone Vapor made"),
        ("", "the UEFI variables (NVRAM) libvirt keeps for the domain"),
        ("", "the TPM state (swtpm) libvirt keeps for the domain"),
    ]
    iso = str(iso_dirs.search[0] / "install.iso")
    assert [(f.path, f.what) for f in plan.kept] == [
        (str(disk_root / "base.qcow2"), "the source of disk vdb's clone"),
        (str(disk_root / "base.qcow2"), "the backing file of disk vdc's clone"),
        (str(disk_root / "data.qcow2"), "disk vdd, an existing file: never erased"),
        (iso, "ISO in CD-ROM sda: stays in the ISO library"),
    ]
    assert plan.volumes == ["mixed-disk0.qcow2", "mixed-disk1.qcow2", "mixed-disk2.qcow2"]


def test_keep_disks_moves_every_disk_to_kept(mixed, hv, disk_root):
    plan = vm_delete_plan(vm=mixed, keep_disks=True)
    assert paths(plan.erased) == ["", ""] and plan.volumes == []  # the NVRAM and TPM state only
    assert str(hv.pool_dir / "mixed-disk0.qcow2") in paths(plan.kept)
    assert [f.what for f in plan.kept][:3] == [
        "disk vda, a volume Vapor created (Keep disks)",
        "disk vdb, a clone Vapor made (Keep disks)",
        "the source of disk vdb's clone",
    ]


def test_vm_delete_erases_what_the_plan_says_and_keeps_the_rest(mixed, hv, disk_root, iso_dirs):
    done = vm_delete(vm=mixed)
    assert list(hv.pool_dir.iterdir()) == [] and "mixed" not in hv.domains
    assert all(Path(f.path).exists() for f in done.kept)
    assert (disk_root / "base.qcow2").exists() and (disk_root / "data.qcow2").exists()


def test_vm_delete_with_keep_disks_keeps_the_files(mixed, hv):
    volumes = sorted(p.name for p in hv.pool_dir.iterdir())
    vm_delete(vm=mixed, keep_disks=True)
    assert "mixed" not in hv.domains and not VirtualMachine.objects.filter(name="mixed").exists()
    assert sorted(p.name for p in hv.pool_dir.iterdir()) == volumes == ["mixed-disk0.qcow2", "mixed-disk1.qcow2", "mixed-disk2.qcow2"]


@pytest.fixture
def base_and_clone(vm_api, hv, run_tasks) -> tuple[VirtualMachine, VirtualMachine]:
    base = create_vm(vm_api, run_tasks, {"name": "base-a", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    base_path = base.disks.get().path
    Path(base_path).unlink()  # the in-memory hypervisor's volumes are placeholders; a clone reads the source's header
    make_image(Path(base_path))
    clone = create_vm(vm_api, run_tasks, {"name": "clone-b", "memory": 512, "vcpus": 1,
                                          "disks": [{"clone_from": base_path, "linked": True}]})  # fmt: skip
    assert clone.status == "running", clone.error
    return base, clone


def test_the_plan_carries_the_linked_clone_refusal_unless_disks_are_kept(base_and_clone):
    base, _ = base_and_clone
    plan = vm_delete_plan(vm=base)
    assert plan.refusal is not None and plan.refusal.code == "disk_in_use" and "VM clone-b" in plan.refused
    assert vm_delete_plan(vm=base, keep_disks=True).refusal is None


# --- the VM's delete page -------------------------------------------------------------------------


def test_the_delete_page_names_the_domain_each_file_and_offers_keep_disks(admin_client, mixed, hv, disk_root):
    html = admin_client.get(delete_page(mixed)).content.decode()
    assert "<h1>Delete virtual machine mixed?</h1>" in html
    assert 'The domain <strong class="vapor-domain">mixed</strong> is forced off and undefined' in html
    erased, kept = _lists(html, "vapor-when-deleting")
    assert f"<code>{hv.pool_dir / 'mixed-disk0.qcow2'}</code>: disk vda, a volume Vapor created" in erased
    assert f"<code>{disk_root / 'data.qcow2'}</code>: disk vdd, an existing file: never erased" in kept
    erased, kept = _lists(html, "vapor-when-keeping")
    assert f"<code>{hv.pool_dir / 'mixed-disk0.qcow2'}</code>: disk vda, a volume Vapor created (Keep disks)" in kept
    assert 'name="keep_disks" id="id_keep_disks"' in html and 'value="Delete mixed"' in html
    assert "Events:" not in html  # no list of database rows


def _lists(html: str, which: str) -> tuple[str, str]:
    block = found(rf'<div class="{which}">(.*?)</div>\s*</div>', html, re.S)
    erased = found(r'<ul class="vapor-erased">(.*?)</ul>', block, re.S)
    return erased, found(r'<ul class="vapor-kept">(.*?)</ul>', block, re.S)


def test_confirming_with_keep_disks_keeps_the_volume(admin_client, simple, hv):
    response = admin_client.post(delete_page(simple), {"post": "yes", "keep_disks": "on"}, follow=True)
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert "The virtual machine web was deleted: domain web undefined, no file erased, 1 kept." in response.content.decode()
    assert "web" not in hv.domains and (hv.pool_dir / "web-disk0.qcow2").exists()
    assert LogEntry.objects.filter(action_flag=DELETION, object_repr="web", object_id=str(simple.pk)).count() == 1


def test_confirming_without_keep_disks_erases_the_volume(admin_client, simple, hv):
    response = admin_client.post(delete_page(simple), {"post": "yes"}, follow=True)
    assert "domain web undefined, 1 file(s) erased, 0 kept" in response.content.decode()
    assert "web" not in hv.domains and list(hv.pool_dir.iterdir()) == []


def test_a_get_deletes_nothing(admin_client, simple, hv):
    assert admin_client.get(delete_page(simple) + "?post=yes&keep_disks=on").status_code == 200
    assert "web" in hv.domains and VirtualMachine.objects.filter(pk=simple.pk).exists()


def test_the_refusal_replaces_the_delete_button(admin_client, base_and_clone, hv):
    base, _ = base_and_clone
    html = admin_client.get(delete_page(base)).content.decode()
    assert re.search(r'class="errornote vapor-refusal">Refused: VM base-a has a disk that backs the linked clones of VM clone-b', html)
    assert 'value="Delete base-a"' not in html and 'id="id_keep_disks"' not in html
    assert 'name="keep_disks" value="on"' in html and 'value="Delete base-a, keep its disks"' in html
    # Confirming without keeping the disks (a stale page) is refused by the service: a message, nothing done.
    response = admin_client.post(delete_page(base), {"post": "yes"}, follow=True)
    assert "Not deleted: VM base-a has a disk that backs" in response.content.decode()
    assert "base-a" in hv.domains and (hv.pool_dir / "base-a-disk0.qcow2").exists()
    admin_client.post(delete_page(base), {"post": "yes", "keep_disks": "on"})
    assert "base-a" not in hv.domains and (hv.pool_dir / "base-a-disk0.qcow2").exists() and "clone-b" in hv.domains


def test_a_viewer_and_a_stranger_get_no_delete_page(simple, hv):
    for role, project in (("viewer", None), ("operator", "other")):
        user = User.objects.create_user(f"{role}-{project}", password=None, is_staff=True)
        join(user, role, project)
        client = Client()
        client.force_login(user)
        for response in (client.get(delete_page(simple)), client.post(delete_page(simple), {"post": "yes"})):
            assert response.status_code in (403, 302), response.status_code
            assert response.status_code == 403 or response["Location"] == "/admin/"
    assert "web" in hv.domains and (hv.pool_dir / "web-disk0.qcow2").exists()


# --- the list's Delete action ------------------------------------------------------------------------


def test_the_list_action_asks_first_naming_the_files_of_each_vm(admin_client, vm_api, run_tasks, simple, hv):
    other = create_vm(vm_api, run_tasks, {"name": "db", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    selection = {"action": "action_delete", "_selected_action": [simple.pk, other.pk], "index": "0"}
    response = admin_client.post(CHANGELIST, selection)
    html = response.content.decode()
    assert response.status_code == 200 and "<h1>Delete the selected virtual machines?</h1>" in html
    for name in ("web", "db"):
        assert f'<strong class="vapor-domain">{name}</strong>' in html and f"<code>{hv.pool_dir / f'{name}-disk0.qcow2'}</code>" in html
    assert html.count('name="_selected_action"') == 2 and 'name="keep_disks"' in html and 'value="Delete 2 virtual machines"' in html
    assert "refused" not in html.lower()
    assert set(hv.domains) == {"web", "db"} and VirtualMachine.objects.count() == 2  # nothing deleted yet

    confirm = {"action": "action_delete", "_selected_action": [simple.pk, other.pk], "post": "yes", "keep_disks": "on"}
    response = admin_client.post(CHANGELIST, confirm, follow=True)
    assert "Delete: web; domain web undefined, no file erased, 1 kept" in response.content.decode()
    assert hv.domains == {} and VirtualMachine.objects.count() == 0
    assert sorted(p.name for p in hv.pool_dir.iterdir()) == ["db-disk0.qcow2", "web-disk0.qcow2"]


def test_the_list_action_deletes_the_others_and_names_the_refused_one(admin_client, base_and_clone, hv):
    base, clone = base_and_clone
    selection = {"action": "action_delete", "_selected_action": [base.pk, clone.pk]}
    html = admin_client.post(CHANGELIST, {**selection, "index": "0"}).content.decode()
    assert "Refused: VM base-a has a disk that backs the linked clones of VM clone-b" in html
    assert "A VM whose delete is refused above stays" in html
    response = admin_client.post(CHANGELIST, {**selection, "post": "yes"}, follow=True)
    page = response.content.decode()
    assert "VM base-a not deleted: VM base-a has a disk that backs" in page and "Delete: clone-b;" in page
    assert set(hv.domains) == {"base-a"}


def test_a_viewer_cannot_run_the_list_delete(simple, hv):
    user = User.objects.create_user("viewer", password=None, is_staff=True)
    join(user, "viewer")
    client = Client()
    client.force_login(user)
    for data in ({"index": "0"}, {"post": "yes"}):
        response = client.post(CHANGELIST, {"action": "action_delete", "_selected_action": [simple.pk], **data})
        assert response.status_code == 403
    assert "web" in hv.domains
