"""Live migration through the API and the task (issue 15 point 6), against in-memory hosts (tests/fakes.FakeHosts):
the default host (VAPOR_LIBVIRT_URI) and h2 share the default pool's directory (shared storage, as NFS would give),
h3 is small (1 GiB). Each fake's `peers` lets a migration from the default host reach h2 and h3.

The real thing (qemu+tcp hosts, a TCG guest that answers on its serial console afterwards) is
tests/multihost/test_migration_api_real.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from isos.hashing import hash_file
from isos.services import IsoMetadata, iso_register_path
from tests.fakes import FakeHosts, FakeHypervisor
from tests.support.api import create_vm
from tests.support.isos import make_iso
from vaporsite.errors import Conflict
from vms.host_models import Host
from vms.hypervisor import HostResources
from vms.hypervisor.documents.domain import parse_domain
from vms.migration_models import VmMigration
from vms.models import CdromAttachment, VirtualMachine, VmEvent, VmSnapshot
from vms.services.migration import vm_migration_run

pytestmark = pytest.mark.django_db

GIB = 2**30
H2 = "qemu+tcp://10.99.0.2/system"
H3 = "qemu+tcp://10.99.0.3/system"
API = "/api/v1/virtualmachines/"


@dataclasses.dataclass
class Bed:
    hosts: FakeHosts
    default: FakeHypervisor
    h2: FakeHypervisor
    h3: FakeHypervisor


@pytest.fixture
def bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bed:
    hosts = FakeHosts(pool_root=tmp_path / "hosts")
    default = hosts.add(django_settings.VAPOR.libvirt_uri)
    hosts.default = default
    h2 = hosts.add(H2, pools={"default": default.pool_dir})  # shared storage with the default host
    h3 = hosts.add(H3, host=HostResources(1 * GIB, cpus=2, model="x86_64", hostname="small"))
    default.peers.update({H2: h2, H3: h3})
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", hosts.get)
    Host.objects.create(name="h2", uri=H2)
    Host.objects.create(name="h3", uri=H3)
    return Bed(hosts, default, h2, h3)


@pytest.fixture
def running(vm_api, run_tasks, bed: Bed) -> VirtualMachine:
    vm = create_vm(vm_api, run_tasks, {"name": "mover", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "host": "default"})
    assert vm.status == "running" and vm.host.name == "default", vm.error
    return vm


def migrate(vm_api, vm: VirtualMachine, run: Any = None, **body: Any) -> Any:
    """POST .../migrate; with `run` (run_tasks) the queued task runs at the end."""
    payload = {"host": "h2", "copy_storage": False, **body}
    if run is None:
        return vm_api.post(f"{API}{vm.pk}/migrate", payload, format="json")
    with run():
        return vm_api.post(f"{API}{vm.pk}/migrate", payload, format="json")


def refused(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == status and body["code"] == code, (response.status_code, body)
    if field:
        assert body.get("field") == field, body
    assert not VmMigration.objects.exists()
    return body


# --- success ----------------------------------------------------------------------------


def test_a_migration_moves_the_vm_and_its_host_changes_only_once_it_succeeded(vm_api, run_tasks, bed: Bed, running, monkeypatch):
    seen: dict[str, Any] = {}
    original = bed.default.migrate_domain

    def watching(name: str, dest_uri: str, **kwargs: Any) -> None:
        seen["host during"] = VirtualMachine.objects.get(pk=running.pk).host.name
        seen["status during"] = VmMigration.objects.get().status
        seen["args"] = (name, dest_uri, kwargs["dest_address"], kwargs["copy_storage"], kwargs["timeout_s"])
        original(name, dest_uri, **kwargs)

    monkeypatch.setattr(bed.default, "migrate_domain", watching)
    response = migrate(vm_api, running, run_tasks)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"].endswith(f"{API}{running.pk}/migrations/{body['id']}")
    assert body["status"] == "queued" and body["source"] == "default" and body["destination"] == "h2"
    assert set(body) >= {"id", "vm", "source", "destination", "copy_storage", "status", "progress", "error"} | {
        "created_at",
        "started_at",
        "finished_at",
    }
    assert seen["host during"] == "default" and seen["status during"] == "running"
    assert seen["args"][:4] == ("mover", H2, "10.99.0.2", False) and seen["args"][4] > 0
    vm = VirtualMachine.objects.get(pk=running.pk)
    assert vm.host.name == "h2" and vm.status == "running"
    assert "mover" in bed.h2.domains and "mover" not in bed.default.domains
    done = vm_api.get(f"{API}{vm.pk}/migrations/{body['id']}").json()
    assert done["status"] == "succeeded" and done["finished_at"] and done["started_at"] and done["error"] == ""
    # progress: what the (fake) job reported, stored on the row
    assert done["progress"]["processed_bytes"] > 0 and done["progress"]["total_bytes"] > 0 and done["progress"]["percent"] == 100.0
    assert VmEvent.objects.filter(vm=vm, step="migrate", status="done", message__startswith="migrated from default to h2 in ").exists()
    assert vm_api.get(f"{API}{vm.pk}").json()["host"] == "h2"
    listed = vm_api.get(f"{API}{vm.pk}/migrations").json()
    assert [m["id"] for m in listed] == [body["id"]]


def test_the_list_is_newest_first_and_a_vm_can_come_back(vm_api, run_tasks, bed: Bed, running):
    bed.h2.peers[django_settings.VAPOR.libvirt_uri] = bed.default
    bed.h2.pools["default"] = bed.default.pool_dir
    first = migrate(vm_api, running, run_tasks).json()
    second = migrate(vm_api, running, run_tasks, host="default").json()
    listed = vm_api.get(f"{API}{running.pk}/migrations").json()
    assert [m["id"] for m in listed] == [second["id"], first["id"]]
    assert [m["status"] for m in listed] == ["succeeded", "succeeded"]
    assert VirtualMachine.objects.get(pk=running.pk).host.name == "default"


def test_copy_storage_removes_the_source_volumes_vapor_created_and_nothing_else(vm_api, run_tasks, bed: Bed, running, monkeypatch):
    # The destination's own filesystem: nothing at the disk's path there yet (it shares the directory name only).
    monkeypatch.setattr(bed.h2, "volume_by_path", lambda path: None)
    disk = running.disks.get()
    assert disk.created_by_vapor and Path(disk.path).exists()
    response = migrate(vm_api, running, run_tasks, copy_storage=True)
    assert response.status_code == 202, response.json()
    assert VmMigration.objects.get().status == "succeeded"
    assert bed.default.calls["delete_volume"] == 1 and not Path(disk.path).exists()
    assert VmEvent.objects.filter(vm=running, message__startswith="removed the source's copy on default: mover").exists()


def test_copy_storage_never_removes_an_existing_disk_given_by_path(vm_api, run_tasks, bed: Bed, running, monkeypatch):
    monkeypatch.setattr(bed.h2, "volume_by_path", lambda path: None)
    running.disks.update(created_by_vapor=False, source="existing")
    path = running.disks.get().path
    assert migrate(vm_api, running, run_tasks, copy_storage=True).status_code == 202
    assert VmMigration.objects.get().status == "succeeded"
    assert bed.default.calls["delete_volume"] == 0 and Path(path).exists()
    assert VmEvent.objects.filter(vm=running, message__contains=f"kept (not Vapor's): {path}").exists()


# --- UEFI: the variables move with the guest ------------------------------------------


@pytest.fixture
def uefi(vm_api, run_tasks, bed: Bed) -> VirtualMachine:
    """A running UEFI VM (Secure Boot) whose variables the firmware has written (libvirt's file on the default host)."""
    body = {"name": "efi", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "host": "default", "uefi": True, "secure_boot": True}
    vm = create_vm(vm_api, run_tasks, body)
    assert vm.status == "running" and vm.uefi, vm.error
    bed.default.nvram["efi"] = b"variables the guest wrote"
    return vm


def test_a_uefi_vm_migrates_with_its_variables_and_the_sources_file_is_removed(vm_api, run_tasks, bed: Bed, uefi):
    assert bed.default.nvram_path("efi") == "/var/lib/libvirt/qemu/nvram/efi_VARS.fd"
    response = migrate(vm_api, uefi, run_tasks)
    assert response.status_code == 202, response.json()
    assert VmMigration.objects.get().status == "succeeded", VmMigration.objects.get().error
    assert VirtualMachine.objects.get(pk=uefi.pk).host.name == "h2"
    assert bed.h2.nvram["efi"] == b"variables the guest wrote" and "efi" not in bed.default.nvram
    assert bed.default.calls["delete_host_file"] == 1
    message = "removed the source's copy of its UEFI variables on default: /var/lib/libvirt/qemu/nvram/efi_VARS.fd"
    assert VmEvent.objects.filter(vm=uefi, step="migrate", status="info", message=message).exists()
    # and back: the file h2 holds goes the same way
    bed.h2.peers[django_settings.VAPOR.libvirt_uri] = bed.default
    bed.h2.pools["default"] = bed.default.pool_dir
    assert migrate(vm_api, uefi, run_tasks, host="default").status_code == 202
    assert bed.default.nvram["efi"] == b"variables the guest wrote" and "efi" not in bed.h2.nvram


def test_a_uefi_vm_is_refused_when_the_destination_holds_its_variables_file(vm_api, bed: Bed, uefi):
    bed.h2.nvram["efi"] = b"another domain's, or a directory both hosts share"
    body = refused(migrate(vm_api, uefi), 409, "destination_storage")
    assert "/var/lib/libvirt/qemu/nvram/efi_VARS.fd" in body["detail"] and "UEFI variables" in body["detail"]
    assert bed.default.nvram["efi"] == b"variables the guest wrote" and bed.default.calls["migrate_domain"] == 0


def test_a_file_that_appeared_on_the_destination_before_the_task_keeps_the_sources(
    vm_api, bed: Bed, uefi, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert migrate(vm_api, uefi).status_code == 202
    bed.h2.nvram["efi"] = b"there before the move"  # the directory may be one both hosts see: never remove it
    for task in queued:
        task()
    assert VmMigration.objects.get().status == "succeeded"
    assert bed.default.nvram["efi"] == b"variables the guest wrote" and bed.default.calls["delete_host_file"] == 0
    assert VmEvent.objects.filter(vm=uefi, message__startswith="kept its UEFI variables on default").exists()


def test_a_tpm_vm_migrates_unless_the_destination_holds_its_tpm_state(vm_api, run_tasks, bed: Bed):
    body = {"name": "win", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "host": "default", "uefi": True, "tpm": True}
    vm = create_vm(vm_api, run_tasks, body)
    assert vm.status == "running" and vm.tpm, vm.error
    state, domain_uuid = bed.default.tpm_state_path("win"), parse_domain(bed.default.domains["win"].xml).uuid
    assert len(domain_uuid) == 36 and state == f"/var/lib/libvirt/swtpm/{domain_uuid}"
    bed.h2.host_files.add(state)  # a directory both hosts share, or another domain's of the same UUID
    detail = refused(migrate(vm_api, vm), 409, "destination_storage")["detail"]
    assert f"{state} (its TPM state)" in detail and "UEFI" not in detail
    bed.h2.host_files.clear()
    assert migrate(vm_api, vm, run_tasks).status_code == 202
    assert VmMigration.objects.get().status == "succeeded" and "win" in bed.h2.domains


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_a_failed_or_cancelled_uefi_migration_keeps_the_sources_variables_and_removes_the_destinations(
    vm_api, run_tasks, bed: Bed, uefi, monkeypatch, how: str
):
    original = bed.default.migrate_domain

    def stops_halfway(name: str, dest_uri: str, **kwargs: Any) -> None:
        bed.h2.nvram[name] = b"the firmware's template"  # libvirt made the destination's file before it failed
        if how == "cancelled":
            migration = VmMigration.objects.get()
            assert vm_api.post(f"{API}{uefi.pk}/migrations/{migration.pk}/cancel").status_code == 202
            original(name, dest_uri, **kwargs)  # its progress callback sees the cancel and raises
        raise Conflict("the destination gave up")

    monkeypatch.setattr(bed.default, "migrate_domain", stops_halfway)
    assert migrate(vm_api, uefi, run_tasks).status_code == 202
    assert VmMigration.objects.get().status == how
    assert VirtualMachine.objects.get(pk=uefi.pk).host.name == "default"
    assert bed.default.nvram["efi"] == b"variables the guest wrote" and "efi" not in bed.h2.nvram
    assert bed.default.calls["delete_host_file"] == 0


def test_a_reconciled_uefi_migration_keeps_the_sources_variables(vm_api, bed: Bed, uefi, settings):
    vm_migration_run(migration_id=_died_mid_migration(bed, uefi, settings))
    assert VmMigration.objects.get().status == "succeeded" and bed.default.nvram["efi"] == b"variables the guest wrote"
    assert VmEvent.objects.filter(vm=uefi, message__startswith="kept its UEFI variables on default").exists()


# --- failure, cancel, twice -------------------------------------------------------------


def test_a_refused_migration_keeps_the_vm_on_the_source_and_records_why(vm_api, run_tasks, bed: Bed, running):
    bed.h2.fail["accept_migration"] = Conflict("the destination refused: out of luck")
    response = migrate(vm_api, running, run_tasks)
    assert response.status_code == 202
    migration = VmMigration.objects.get()
    assert migration.status == "failed" and "out of luck" in migration.error and migration.finished_at
    vm = VirtualMachine.objects.get(pk=running.pk)
    assert vm.host.name == "default" and vm.status == "running"
    assert bed.default.domains["mover"].state == "running" and "mover" not in bed.h2.domains
    event = VmEvent.objects.get(vm=vm, step="migrate", status="failed")
    assert "out of luck" in event.message and "mover running on default" in event.message


def test_a_cancel_while_it_runs_aborts_it_and_the_vm_stays(vm_api, run_tasks, bed: Bed, running, monkeypatch):
    original = bed.default.migrate_domain

    def cancelled_meanwhile(name: str, dest_uri: str, **kwargs: Any) -> None:
        migration = VmMigration.objects.get()
        assert vm_api.post(f"{API}{running.pk}/migrations/{migration.pk}/cancel").status_code == 202
        original(name, dest_uri, **kwargs)  # its progress callback sees the cancel and raises

    monkeypatch.setattr(bed.default, "migrate_domain", cancelled_meanwhile)
    assert migrate(vm_api, running, run_tasks).status_code == 202
    migration = VmMigration.objects.get()
    assert migration.status == "cancelled" and migration.cancel_requested
    assert VirtualMachine.objects.get(pk=running.pk).host.name == "default" and "mover" in bed.default.domains
    finished = vm_api.post(f"{API}{running.pk}/migrations/{migration.pk}/cancel")
    assert finished.status_code == 409 and finished.json()["code"] == "migration_finished"


def test_a_queued_migration_cancelled_never_runs(vm_api, bed: Bed, running, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        body = migrate(vm_api, running).json()
    cancel = vm_api.post(f"{API}{running.pk}/migrations/{body['id']}/cancel")
    assert cancel.status_code == 202 and cancel.json()["status"] == "cancelled"
    for task in queued:
        task()
    assert bed.default.calls["migrate_domain"] == 0 and VmMigration.objects.get().status == "cancelled"


def test_a_task_delivered_twice_migrates_once(vm_api, run_tasks, bed: Bed, running):
    body = migrate(vm_api, running, run_tasks).json()
    vm_migration_run(migration_id=body["id"])
    assert bed.default.calls["migrate_domain"] == 1
    assert VmMigration.objects.get().status == "succeeded" and VmEvent.objects.filter(step="migrate", status="done").count() == 1


def test_a_worker_that_died_mid_migration_is_reconciled_from_where_the_domain_runs(vm_api, bed: Bed, running, settings):
    vm_migration_run(migration_id=_died_mid_migration(bed, running, settings))
    assert VmMigration.objects.get().status == "succeeded" and VirtualMachine.objects.get(pk=running.pk).host.name == "h2"


# --- refusals ---------------------------------------------------------------------------


def test_a_stopped_vm_is_refused(vm_api, bed: Bed, running):
    VirtualMachine.objects.filter(pk=running.pk).update(status="stopped")
    refused(migrate(vm_api, running), 409, "vm_not_running")


def test_unknown_own_unavailable_and_full_hosts_are_refused(vm_api, bed: Bed, running):
    refused(migrate(vm_api, running, host="nowhere"), 404, "host_not_found", "host")
    refused(migrate(vm_api, running, host="default"), 400, "same_host", "host")
    Host.objects.filter(name="h2").update(maintenance=True)
    refused(migrate(vm_api, running), 409, "host_unavailable", "host")
    Host.objects.filter(name="h2").update(maintenance=False, enabled=False)
    refused(migrate(vm_api, running), 409, "host_unavailable", "host")
    Host.objects.filter(name="h2").update(enabled=True, health="down")
    refused(migrate(vm_api, running), 409, "host_unavailable", "host")
    bed.h3.pools["default"] = bed.default.pool_dir
    VirtualMachine.objects.filter(pk=running.pk).update(memory_mb=2048)
    body = refused(migrate(vm_api, running, host="h3"), 409, "host_full", "host")
    assert "memory: 0 MB used by 0 VM(s) + 2048 MB asked > 1024 MB budget" in body["detail"]


def test_a_second_migration_while_one_is_queued_is_refused(vm_api, bed: Bed, running, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        assert migrate(vm_api, running).status_code == 202
        again = migrate(vm_api, running)
    assert again.status_code == 409 and again.json()["code"] == "migration_in_progress"
    assert VmMigration.objects.count() == 1


def test_snapshots_are_refused(vm_api, bed: Bed, running):
    VmSnapshot.objects.create(vm=running, name="before", vm_state="running")
    refused(migrate(vm_api, running), 409, "has_snapshots")
    assert "mover" in bed.default.domains and bed.default.calls["migrate_domain"] == 0


def test_an_iso_the_destination_lacks_is_refused_and_named(vm_api, bed: Bed, running, iso_dirs, tmp_path):
    made = make_iso(tmp_path / "made.iso", label="Media 1.0")
    path = shutil.copyfile(made, iso_dirs.search[0] / "media.iso")
    iso = iso_register_path(path=str(path), meta=IsoMetadata(name="media"), digests=hash_file(path))
    CdromAttachment.objects.create(vm=running, iso=iso, slot="primary", target_dev="sda")
    body = refused(migrate(vm_api, running), 409, "readonly_media")
    assert f"ISO {iso.pk} in CD-ROM sda ({path})" in body["detail"] and "Eject them first" in body["detail"]
    # The same file at the same path on the destination (an ISO share): allowed.
    bed.h2.pools["isos"] = Path(path).parent
    assert migrate(vm_api, running).status_code == 202


def test_storage_the_destination_cannot_hold_is_refused(vm_api, bed: Bed, running):
    # copy_storage: the file is there already (the shared directory): libvirt would write over it.
    body = refused(migrate(vm_api, running, copy_storage=True), 409, "destination_storage")
    assert "there already" in body["detail"]
    # no pool in the disk's directory (copy_storage), and the file not visible there (shared storage)
    del bed.h2.pools["default"]
    body = refused(migrate(vm_api, running, copy_storage=True), 409, "destination_storage")
    assert "no storage pool in" in body["detail"]
    body = refused(migrate(vm_api, running, copy_storage=False), 409, "destination_storage")
    assert "not visible there" in body["detail"]


def test_a_viewer_of_the_project_may_not_migrate(bed: Bed, running):
    from django.contrib.auth.models import Permission, User
    from rest_framework.test import APIClient

    from projects.choices import Role
    from projects.models import Membership, default_project_pk

    user = User.objects.create_user("looker")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="vms"))
    Membership.objects.create(user=user, project_id=default_project_pk(), role=Role.VIEWER)
    client = APIClient()
    client.force_authenticate(user)
    refused(migrate(client, running), 403, "forbidden")
    assert client.get(f"{API}{running.pk}/migrations").status_code == 200


# --- admin ------------------------------------------------------------------------------

ADMIN_VM = "/admin/vms/virtualmachine/{}/change/"


def test_admin_migrate_page_offers_usable_hosts_and_says_why_not(admin_client, bed: Bed, running, run_tasks):
    Host.objects.filter(name="h3").update(maintenance=True)
    page = admin_client.get(ADMIN_VM.format(running.pk))
    assert 'id="vapor-migrate"' in page.content.decode() and 'id="vapor-vm-host">default<' in page.content.decode()
    form = admin_client.get(f"/admin/vms/virtualmachine/{running.pk}/migrate/").content.decode()
    assert '<option value="h2">h2</option>' in form
    assert '<option value="h3" disabled>h3 — in maintenance</option>' in form
    assert 'value="default"' not in form  # its own host is not offered
    with run_tasks():
        done = admin_client.post(f"/admin/vms/virtualmachine/{running.pk}/migrate/", {"host": "h2"})
    assert done.status_code == 302 and done["Location"].endswith(ADMIN_VM.format(running.pk))
    assert VmMigration.objects.get().status == "succeeded" and not VmMigration.objects.get().copy_storage
    page = admin_client.get(ADMIN_VM.format(running.pk)).content.decode()
    assert 'id="vapor-vm-host">h2<' in page and 'data-status="succeeded"' in page and "vapor-migration-progress" not in page


def test_admin_refusal_is_shown_on_the_form(admin_client, bed: Bed, running):
    refused = admin_client.post(f"/admin/vms/virtualmachine/{running.pk}/migrate/", {"host": "h2", "copy_storage": "on"})
    assert refused.status_code == 409 and "there already" in refused.content.decode()
    assert not VmMigration.objects.exists()


def test_admin_vm_page_shows_a_queued_migration_with_cancel_and_refreshes(
    admin_client, bed: Bed, running, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(f"/admin/vms/virtualmachine/{running.pk}/migrate/", {"host": "h2"})
    migration = VmMigration.objects.get()
    VmMigration.objects.filter(pk=migration.pk).update(status="running", processed_bytes=300 * 2**20, total_bytes=600 * 2**20)
    page = admin_client.get(ADMIN_VM.format(running.pk)).content.decode()
    assert 'id="vapor-migration-progress"' in page and "50.0%" in page and 'http-equiv="refresh"' in page
    assert 'id="vapor-migrate"' not in page  # no second migration while one runs
    cancelled = admin_client.post(f"/admin/vms/virtualmachine/{running.pk}/migrations/{migration.pk}/cancel/")
    assert cancelled.status_code == 302 and VmMigration.objects.get().cancel_requested
    assert "Cancel asked." in admin_client.get(ADMIN_VM.format(running.pk)).content.decode()


def test_the_database_holds_one_unfinished_migration_per_vm(bed: Bed, running):
    from django.db import IntegrityError, transaction

    h2 = Host.objects.get(name="h2")
    VmMigration.objects.create(vm=running, source=running.host, destination=h2, status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        VmMigration.objects.create(vm=running, source=running.host, destination=h2)
    VmMigration.objects.create(vm=running, source=running.host, destination=h2, status="failed")  # finished ones: any number


def test_power_actions_and_delete_wait_for_a_migration(vm_api, bed: Bed, running, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        assert migrate(vm_api, running).status_code == 202
    for refused_call in (vm_api.post(f"{API}{running.pk}/force-stop"), vm_api.delete(f"{API}{running.pk}")):
        assert refused_call.status_code == 409 and refused_call.json()["code"] == "migration_in_progress", refused_call.json()
    assert bed.default.domains["mover"].state == "running" and VirtualMachine.objects.filter(pk=running.pk).exists()


def _died_mid_migration(bed: Bed, vm: VirtualMachine, settings) -> int:
    """A migration of `vm` to h2 whose domain got there while the worker that ran it died before it said so:
    claimed long ago, still `running`. Its id, for `vm_migration_run` to reconcile."""
    from datetime import timedelta

    from django.utils import timezone

    from vms.services.migration import vm_migrate

    migration = vm_migrate(vm=vm, host="h2", copy_storage=False)
    bed.h2.domains[vm.name] = bed.default.domains.pop(vm.name)
    long_ago = timezone.now() - timedelta(seconds=settings.VAPOR.q_timeout + 60)
    VmMigration.objects.filter(pk=migration.pk).update(status="running", claimed_at=long_ago, attempts=1)
    return migration.pk
