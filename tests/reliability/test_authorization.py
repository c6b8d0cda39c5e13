"""The authorization matrix: anonymous, viewer, operator and admin against every API and admin action.

A denied cell must answer 401/403 (API) or send to the login page / 403
(admin), with no call on the hypervisor (a spy counts every method, reads
included, and every connection asked for), no task queued and no row changed.
An allowed cell must do what the action does: the page or object shown, the
row created, changed or deleted, the task queued (and run, as django-q2's
sync mode runs it at commit), the hypervisor called; each action names its
effect below. Also: CSRF on session-authenticated writes, the VNC password
kept out of every response, page, log line and queued task, and `manage.py
check --deploy` with production settings.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_q.conf import Conf
from django_q.models import OrmQ, Task
from django_q.signing import SignedPackage
from rest_framework.test import APIClient

from isos.hashing import hash_file
from isos.models import IsoImage, IsoStatus, RetiredIsoId
from isos.services import IsoMetadata, iso_register_path
from tests.conftest import IsoDirs
from tests.fakes import FakeHypervisor
from tests.reliability.authz import HOST_LISTING, HypervisorSpy, changed_rows, make_role, record_allowed, rows
from tests.reliability.conftest import Tally
from tests.support.isos import make_iso
from tests.test_settings import manage
from vms.host_models import Host
from vms.migration_models import VmMigration  # several hosts: live migration
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent, VmSnapshot, VmTemplate

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "authorization"
ROLES = ("anonymous", "viewer", "operator", "admin")
API = "/api/v1/virtualmachines/"
HOSTS = "/api/v1/hosts"  # issue 15
ADMIN = "/admin/"


@dataclass(frozen=True)
class Seen:
    """What an allowed request did, for its action's effect check."""

    response: Any
    seeds: dict[str, str]
    before: dict[str, dict[Any, str]]  # rows() before the request
    after: dict[str, dict[Any, str]]
    spy: HypervisorSpy
    tasks: int  # on-commit callbacks the request registered: queued tasks

    @property
    def body(self) -> str:
        return self.response.content.decode()


# An effect check asserts what an allowed request did and returns it in a few words (for the report).
Effect = Callable[[Seen], str]


@dataclass(frozen=True)
class Action:
    name: str
    method: str
    url: str  # with {vm}, {iso}, {template}, {iso_downloading}, {iso_failed} for the seeded objects
    kind: str  # "view", "add", "change" or "delete": what the viewer may do is "view" only
    data: dict[str, Any] = field(default_factory=dict)
    api: bool = True
    effect: Effect | None = None  # None: a page or listing, checked by shows()
    superuser_writes: bool = False  # issue 15: hosts are the installation's: only superusers (or vms.*_host) change them


def _status(seen: Seen, *expected: int) -> None:
    assert seen.response.status_code in expected, (seen.response.status_code, seen.response.content[:500])


def shows(*texts: str, refreshes_state: bool = False) -> Effect:
    """A read: 200, the seeded objects named in the body, nothing written, no task. With `refreshes_state`,
    the VM's row may change: reading one VM stores the live domain state it read (vm_sync_state)."""

    def check(seen: Seen) -> str:
        _status(seen, 200)
        wanted = [_fill(text, seen.seeds) for text in texts]
        missing = [text for text in wanted if text not in seen.body]
        assert not missing, f"the page does not show {missing}"
        ignored = ("vms.VirtualMachine",) if refreshes_state else ()
        before = {label: rows for label, rows in seen.before.items() if label not in ignored}
        after = {label: rows for label, rows in seen.after.items() if label not in ignored}
        assert changed_rows(before, after) == 0 and seen.tasks == 0, "a read wrote something"
        if refreshes_state:
            assert seen.after["vms.VirtualMachine"].keys() == seen.before["vms.VirtualMachine"].keys(), "a read created or deleted a VM"
        return f"shows {', '.join(wanted)}" if wanted else "shows the page"

    return check


def creates(code: int, model: Any, what: str, /, *, task: bool = False, hv_call: str = "", **lookup: Any) -> Effect:
    """The row exists afterwards (and not before); its task queued; the hypervisor called."""

    def check(seen: Seen) -> str:
        _status(seen, code)
        filled = {key: _fill(value, seen.seeds) for key, value in lookup.items()}
        assert model.objects.filter(**filled).count() == 1, f"no {what} {filled} was created"
        assert seen.after.get(model._meta.label, {}).keys() - seen.before.get(model._meta.label, {}).keys(), "no new row"
        done = [f"{what} created"]
        if task:
            assert seen.tasks >= 1, "no task was queued"
            done.append(f"{seen.tasks} task(s) queued")
        if hv_call:
            assert seen.spy.calls[hv_call] >= 1, f"the hypervisor's {hv_call} was not called: {dict(seen.spy.calls)}"
            done.append(f"{hv_call} called")
        return ", ".join(done)

    return check


def provisions(status: int, name: str) -> Effect:
    """A VM row, its provisioning task queued and run: the domain defined and started on the (fake) host."""

    def check(seen: Seen) -> str:
        _status(seen, status)
        vm = VirtualMachine.objects.get(name=name)
        assert seen.tasks >= 1, "no provisioning task was queued"
        assert vm.status == "running", (vm.status, vm.error)
        assert seen.spy.calls["define_domain"] == 1 and seen.spy.calls["start_domain"] == 1, dict(seen.spy.calls)
        assert name in seen.spy.inner.domains
        return f"VM {name} created, provisioning queued, domain defined and started"

    return check


def changes(code: int, model: Any, key: str, /, *, task: bool = False, **expected: Any) -> Effect:
    """The seeded row `key` now holds `expected`."""

    def check(seen: Seen) -> str:
        _status(seen, code)
        row = model.objects.filter(**{("name" if key == "template" else "pk"): seen.seeds[key]}).values(*expected).get()
        assert row == expected, (row, expected)
        done = [f"{model.__name__} {', '.join(f'{k}={v!r}' for k, v in expected.items())}"]
        if task:
            assert seen.tasks >= 1, "no task was queued"
            done.append(f"{seen.tasks} task(s) queued")
        return ", ".join(done)

    return check


def retired(status: int) -> Effect:
    def check(seen: Seen) -> str:
        _status(seen, status)
        assert not IsoImage.objects.filter(pk=seen.seeds["iso"]).exists(), "the ISO is still there"
        assert RetiredIsoId.objects.filter(pk=seen.seeds["iso"]).exists(), "its id was not retired"
        return "ISO deleted, its id retired"

    return check


def vm_gone(status: int) -> Effect:
    def check(seen: Seen) -> str:
        _status(seen, status)
        assert not VirtualMachine.objects.filter(pk=seen.seeds["vm"]).exists(), "the VM row is still there"
        assert seen.spy.calls["undefine_domain"] == 1 and "seed-vm" not in seen.spy.inner.domains, dict(seen.spy.calls)
        return "VM row deleted, domain undefined"

    return check


def template_gone(status: int) -> Effect:
    def check(seen: Seen) -> str:
        _status(seen, status)
        assert not VmTemplate.objects.filter(name=seen.seeds["template"]).exists(), "the template is still there"
        return "template deleted"

    return check


def powers(status: int, method: str, step: str, vm_status: str | None = None) -> Effect:
    """The lifecycle call reached the hypervisor once and was recorded."""

    def check(seen: Seen) -> str:
        _status(seen, status)
        assert seen.spy.calls[method] == 1, f"{method} was not called once: {dict(seen.spy.calls)}"
        assert VmEvent.objects.filter(vm_id=int(seen.seeds["vm"]), step=step).exists(), f"no {step} event"
        if vm_status:
            assert VirtualMachine.objects.get(pk=seen.seeds["vm"]).status == vm_status
        return f"{method} called, {step} recorded" + (f", VM {vm_status}" if vm_status else "")

    return check


def nic_gone(seen: Seen, status: int) -> str:
    _status(seen, status)
    assert not NetworkInterface.objects.filter(mac=seen.seeds["vm_mac"]).exists(), "the NIC row is still there"
    assert seen.spy.calls["detach_nic"] == 1, dict(seen.spy.calls)
    return "NIC row deleted, detach_nic called"


def refreshes(seen: Seen) -> str:
    _status(seen, 302)
    assert seen.spy.calls["list_domains"] == 1, dict(seen.spy.calls)
    assert VirtualMachine.objects.get(pk=seen.seeds["vm"]).state_checked_at is not None, "the state was not stored"
    return "one host listing, state stored"


def refreshes_one(seen: Seen) -> str:
    """The VM page's Refresh button: one listing and one bulk address read, both stored, audited."""
    _status(seen, 302)
    assert seen.spy.calls["list_domains"] == 1 and seen.spy.calls["domain_addresses"] == 1, dict(seen.spy.calls)
    vm = VirtualMachine.objects.get(pk=seen.seeds["vm"])
    assert vm.state_checked_at is not None and vm.addresses_checked_at is not None, "state and addresses were not stored"
    return "one host listing and one address read, both stored"


def snapshot_gone(status: int) -> Effect:  # day two: snapshots
    def check(seen: Seen) -> str:
        _status(seen, status)
        assert not VmSnapshot.objects.filter(name="seed-snap").exists(), "the snapshot row is still there"
        assert seen.spy.calls["delete_snapshot"] == 1 and seen.spy.inner.list_snapshots("seed-vm") == [], dict(seen.spy.calls)
        return "snapshot row deleted, delete_snapshot called"

    return check


# several hosts: live migration (effects)
def migrated(code: int) -> Effect:
    """The migration queued and run (django-q2's sync mode): seed-mover now on h2, recorded."""

    def check(seen: Seen) -> str:
        _status(seen, code)
        migration = VmMigration.objects.get(vm_id=int(seen.seeds["mover"]))
        assert migration.status == "succeeded", (migration.status, migration.error)
        assert VirtualMachine.objects.get(pk=seen.seeds["mover"]).host.name == "h2"
        assert seen.tasks >= 1 and seen.spy.calls["migrate_domain"] == 1, dict(seen.spy.calls)
        return "migration queued and run, migrate_domain called, VM on h2"

    return check


def migration_cancelled(code: int) -> Effect:
    def check(seen: Seen) -> str:
        _status(seen, code)
        migration = VmMigration.objects.get(pk=seen.seeds["migration"])
        assert migration.status == "cancelled" and migration.cancel_requested, migration.status
        return "queued migration cancelled"

    return check


# day two: disks (effects)
def disk_grown(code: int) -> Effect:
    def check(seen: Seen) -> str:
        _status(seen, code)
        assert Disk.objects.get(vm_id=int(seen.seeds["vm"]), target_dev="vda").size_gb == 2
        assert seen.spy.calls["block_resize"] == 1, dict(seen.spy.calls)
        return "disk vda grown to 2 GB, blockResize called"

    return check


def disk_detached(seen: Seen) -> str:
    _status(seen, 204)
    assert not Disk.objects.filter(vm_id=int(seen.seeds["vm"]), target_dev="vda").exists(), "the disk row is still there"
    assert seen.spy.calls["detach_device"] == 1, dict(seen.spy.calls)
    return "disk vda detached"


def cdrom_ejected(code: int) -> Effect:
    def check(seen: Seen) -> str:
        _status(seen, code)
        assert not CdromAttachment.objects.filter(vm_id=int(seen.seeds["vm"])).exists(), "the ISO is still recorded in the drive"
        assert seen.spy.calls["update_device"] == 1, dict(seen.spy.calls)
        return "CD-ROM sda ejected, updateDevice called"

    return check


def host_gone(status: int) -> Effect:  # issue 15: hosts
    def check(seen: Seen) -> str:
        _status(seen, status)
        assert not Host.objects.filter(name="seed-host").exists(), "the host is still there"
        return "host removed"

    return check


def refused_while_running(seen: Seen) -> str:
    """Allowed, then refused by the VM's state: 409 not_hotpluggable, nothing changed."""
    _status(seen, 409)
    assert seen.response.json()["code"] == "not_hotpluggable"
    assert changed_rows(seen.before, seen.after) == 0
    assert seen.spy.calls["attach_device"] + seen.spy.calls["detach_device"] == 0, dict(seen.spy.calls)
    return "409 not_hotpluggable (SATA drive, running VM), nothing changed"


def _rows_form(prefix: str, items: list[dict[str, str]]) -> dict[str, str]:
    data = {f"{prefix}-TOTAL_FORMS": str(len(items)), f"{prefix}-INITIAL_FORMS": "0",
            f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"}  # fmt: skip
    for index, item in enumerate(items):
        data.update({f"{prefix}-{index}-{key}": value for key, value in item.items()})
    return data


VM_FORM = {
    "name": "made-in-admin", "memory": "512", "vcpus": "1", "architecture": "x86_64", "graphics_type": "vnc", "graphics_port": "-1",
    "storage_pool": "default", **_rows_form("disks", [{"size": "1", "format": "qcow2", "bus": "virtio"}]),
    **_rows_form("networks", [{"type": "nat", "source": "default", "model": "virtio"}]), "_create": "Create",
}  # fmt: skip
TEMPLATE_FORM = {
    "name": "tpl-admin", "description": "", "memory_mb": "512", "vcpus": "1", "architecture": "x86_64", "storage_pool": "default",
    "os_type": "", "os_variant": "", "graphics_type": "vnc", **_rows_form("disks", []), **_rows_form("nics", []),
}  # fmt: skip
VM_CREATE = {"name": "made-by-api", "memory": 512, "vcpus": 1}


def _vm_action(action: str, effect: Effect, kind: str = "change") -> Action:
    return Action(f"admin VM action {action}", "POST", ADMIN + "vms/virtualmachine/", kind,
                  {"action": action, "_selected_action": "{vm}", "index": "0"}, api=False, effect=effect)  # fmt: skip


def _iso_action(action: str, iso: str, effect: Effect) -> Action:
    return Action(f"admin ISO action {action}", "POST", ADMIN + "isos/isoimage/", "change",
                  {"action": action, "_selected_action": "{" + iso + "}", "index": "0"}, api=False, effect=effect)  # fmt: skip


POWER = {"start": ("start_domain", "running"), "stop": ("shutdown_domain", None), "force-stop": ("destroy_domain", "stopped"),
         "reboot": ("reboot_domain", None)}  # fmt: skip


ACTIONS = [
    # --- API: ISO library (isos/api/urls.py)
    Action("API GET isos", "GET", API + "isos", "view", effect=shows("{iso}", "{iso_failed}")),
    Action("API POST isos (register)", "POST", API + "isos", "add", {"path": "{spare_iso}"},
           effect=creates(201, IsoImage, "ISO", task=True, path="{spare_iso}", status=IsoStatus.READY)),
    Action("API POST isos (download)", "POST", API + "isos", "add", {"url": "http://127.0.0.1:9/x.iso"},
           effect=creates(202, IsoImage, "ISO", task=True, source_url="http://127.0.0.1:9/x.iso")),
    Action("API GET iso", "GET", API + "isos/{iso}", "view", effect=shows("{iso}", "seed.iso")),
    Action("API PATCH iso", "PATCH", API + "isos/{iso}", "change", {"description": "changed"},
           effect=changes(200, IsoImage, "iso", description="changed")),
    Action("API DELETE iso", "DELETE", API + "isos/{iso}", "delete", effect=retired(204)),
    Action("API POST iso cancel", "POST", API + "isos/{iso_downloading}/cancel", "change",
           effect=changes(200, IsoImage, "iso_downloading", status=IsoStatus.CANCELLED)),
    Action("API POST iso retry", "POST", API + "isos/{iso_failed}/retry", "change",
           effect=changes(200, IsoImage, "iso_failed", task=True, status=IsoStatus.READY, error="")),
    Action("API POST iso rehash", "POST", API + "isos/{iso}/rehash", "change",
           effect=changes(200, IsoImage, "iso", task=True, status=IsoStatus.READY)),
    # --- API: VMs and templates (vms/api/urls.py)
    Action("API GET vms", "GET", API, "view", effect=shows("seed-vm")),
    Action("API POST vms (legacy create)", "POST", API, "add", VM_CREATE, effect=provisions(202, "made-by-api")),
    Action("API POST create-enhanced", "POST", API + "create-enhanced", "add", VM_CREATE, effect=provisions(202, "made-by-api")),
    Action("API GET vm", "GET", API + "{vm}", "view", effect=shows("seed-vm", refreshes_state=True)),
    Action("API DELETE vm", "DELETE", API + "{vm}", "delete", effect=vm_gone(204)),
    *[Action(f"API POST vm {a}", "POST", API + "{vm}/" + a, "change", effect=powers(200, POWER[a][0], a, POWER[a][1])) for a in POWER],
    Action("API GET templates", "GET", API + "templates", "view", effect=shows("seed-tpl")),
    Action("API POST templates", "POST", API + "templates", "add", {"name": "tpl-new", "memory": 512, "vcpus": 1},
           effect=creates(201, VmTemplate, "template", name="tpl-new", memory_mb=512)),
    Action("API GET template", "GET", API + "templates/{template}", "view", effect=shows("seed-tpl")),
    Action("API PATCH template", "PATCH", API + "templates/{template}", "change", {"memory": 1024},
           effect=changes(200, VmTemplate, "template", memory_mb=1024)),
    Action("API DELETE template", "DELETE", API + "templates/{template}", "delete", effect=template_gone(204)),
    # --- API: disks and CD-ROMs (day two: disks)
    Action("API GET vm disks", "GET", API + "{vm}/disks", "view", effect=shows("seed-vm-disk0.qcow2")),
    Action("API POST vm disks", "POST", API + "{vm}/disks", "change", {"size": 1},
           effect=creates(201, Disk, "disk", hv_call="attach_device", vm_id="{vm}", target_dev="vdb")),
    Action("API GET vm disk", "GET", API + "{vm}/disks/vda", "view", effect=shows("seed-vm-disk0.qcow2")),
    Action("API PATCH vm disk", "PATCH", API + "{vm}/disks/vda", "change", {"size_gb": 2}, effect=disk_grown(200)),
    Action("API DELETE vm disk", "DELETE", API + "{vm}/disks/vda", "change", effect=disk_detached),
    Action("API GET vm cdroms", "GET", API + "{vm}/cdroms", "view", effect=shows("{cd_iso}")),
    Action("API POST vm cdroms", "POST", API + "{vm}/cdroms", "change", {"iso": None}, effect=refused_while_running),
    Action("API GET vm cdrom", "GET", API + "{vm}/cdroms/sda", "view", effect=shows("{cd_iso}")),
    Action("API PUT vm cdrom", "PUT", API + "{vm}/cdroms/sda", "change", {"iso": None}, effect=cdrom_ejected(200)),
    Action("API DELETE vm cdrom", "DELETE", API + "{vm}/cdroms/sda", "change", effect=refused_while_running),
    # --- admin: VMs
    Action("admin VM list", "GET", ADMIN + "vms/virtualmachine/", "view", api=False, effect=shows("seed-vm")),
    Action("admin VM change page", "GET", ADMIN + "vms/virtualmachine/{vm}/change/", "view", api=False, effect=shows("seed-vm")),
    Action("admin VM history", "GET", ADMIN + "vms/virtualmachine/{vm}/history/", "view", api=False, effect=shows("seed-vm")),
    Action("admin VM ISO picker", "GET", ADMIN + "vms/virtualmachine/iso-picker/?term=seed", "view", api=False, effect=shows("{iso}")),
    Action("admin VM add page", "GET", ADMIN + "vms/virtualmachine/add/", "add", api=False, effect=shows('name="name"')),
    Action("admin VM add (create)", "POST", ADMIN + "vms/virtualmachine/add/", "add", VM_FORM, api=False,
           effect=provisions(302, "made-in-admin")),
    Action("admin VM delete page", "GET", ADMIN + "vms/virtualmachine/{vm}/delete/", "delete", api=False,
           effect=shows("seed-vm", 'name="post"')),
    Action("admin VM delete (confirm)", "POST", ADMIN + "vms/virtualmachine/{vm}/delete/", "delete", {"post": "yes"}, api=False,
           effect=vm_gone(302)),
    _vm_action("action_start", powers(302, "start_domain", "start", "running")),
    _vm_action("action_stop", powers(302, "shutdown_domain", "stop")),
    _vm_action("action_force_stop", powers(302, "destroy_domain", "force-stop", "stopped")),
    Action("admin VM action action_delete (confirmation page)", "POST", ADMIN + "vms/virtualmachine/", "delete",
           {"action": "action_delete", "_selected_action": "{vm}", "index": "0"}, api=False,
           effect=shows("seed-vm", 'name="post"')),
    Action("admin VM action action_delete (confirmed)", "POST", ADMIN + "vms/virtualmachine/", "delete",
           {"action": "action_delete", "_selected_action": "{vm}", "index": "0", "post": "yes"}, api=False, effect=vm_gone(302)),
    _vm_action("action_reboot", powers(302, "reboot_domain", "reboot")),
    *[Action(f"admin VM page button {a}", "POST", ADMIN + "vms/virtualmachine/{vm}/action/" + a + "/", "change", api=False,
             effect=powers(302, POWER[a][0], a, POWER[a][1])) for a in ("stop", "force-stop", "reboot")],
    _vm_action("refresh_states", refreshes),
    Action("admin VM page button refresh", "POST", ADMIN + "vms/virtualmachine/{vm}/refresh/", "change", api=False, effect=refreshes_one),
    # --- admin: the VM page's Disks & CD-ROMs forms (day two: disks)
    Action("admin VM disks attach", "POST", ADMIN + "vms/virtualmachine/{vm}/disks/attach/", "change", {"size": "1", "bus": "virtio"},
           api=False, effect=creates(302, Disk, "disk", hv_call="attach_device", vm_id="{vm}", target_dev="vdb")),
    Action("admin VM disks grow", "POST", ADMIN + "vms/virtualmachine/{vm}/disks/grow/", "change", {"target_dev": "vda", "size_gb": "2"},
           api=False, effect=disk_grown(302)),
    Action("admin VM CD-ROM eject", "POST", ADMIN + "vms/virtualmachine/{vm}/disks/cdrom/", "change", {"target_dev": "sda", "iso": ""},
           api=False, effect=cdrom_ejected(302)),
    # --- admin: templates
    Action("admin template list", "GET", ADMIN + "vms/vmtemplate/", "view", api=False, effect=shows("seed-tpl")),
    Action("admin template change page", "GET", ADMIN + "vms/vmtemplate/{template_pk}/change/", "view", api=False,
           effect=shows("seed-tpl")),
    Action("admin template add page", "GET", ADMIN + "vms/vmtemplate/add/", "add", api=False, effect=shows('name="name"')),
    Action("admin template add (save)", "POST", ADMIN + "vms/vmtemplate/add/", "add", TEMPLATE_FORM, api=False,
           effect=creates(302, VmTemplate, "template", name="tpl-admin", memory_mb=512)),
    Action(
        "admin template change (save)",
        "POST",
        ADMIN + "vms/vmtemplate/{template_pk}/change/",
        "change",
        {**TEMPLATE_FORM, "name": "{template}", "memory_mb": "2048"},
        api=False,
        effect=changes(302, VmTemplate, "template", memory_mb=2048),
    ),
    Action("admin template delete (confirm)", "POST", ADMIN + "vms/vmtemplate/{template_pk}/delete/", "delete", {"post": "yes"}, api=False,
           effect=template_gone(302)),
    # --- admin: ISOs
    Action("admin ISO list", "GET", ADMIN + "isos/isoimage/", "view", api=False, effect=shows("/admin/isos/isoimage/{iso}/change/")),
    Action("admin ISO change page", "GET", ADMIN + "isos/isoimage/{iso}/change/", "view", api=False, effect=shows("seed.iso")),
    Action("admin ISO add page", "GET", ADMIN + "isos/isoimage/add/", "add", api=False, effect=shows('name="path"')),
    Action("admin ISO add (register)", "POST", ADMIN + "isos/isoimage/add/", "add", {"path": "{spare_iso}"}, api=False,
           effect=creates(302, IsoImage, "ISO", task=True, path="{spare_iso}", status=IsoStatus.READY)),
    Action(
        "admin ISO change (save)",
        "POST",
        ADMIN + "isos/isoimage/{iso}/change/",
        "change",
        {"name": "renamed", "architecture": "x86_64", "os_type": "", "os_variant": "", "description": ""},
        api=False,
        effect=changes(302, IsoImage, "iso", name="renamed", architecture="x86_64"),
    ),
    Action("admin ISO delete (confirm)", "POST", ADMIN + "isos/isoimage/{iso}/delete/", "delete", {"post": "yes"}, api=False,
           effect=retired(302)),
    _iso_action("action_iso_rehash", "iso", changes(302, IsoImage, "iso", task=True, status=IsoStatus.READY)),
    _iso_action("action_iso_retry", "iso_failed", changes(302, IsoImage, "iso_failed", task=True, status=IsoStatus.READY, error="")),
    _iso_action("action_iso_cancel", "iso_downloading", changes(302, IsoImage, "iso_downloading", status=IsoStatus.CANCELLED)),
    # --- day two: hardware (PATCH a VM, its NICs, the admin's Change hardware page)
    Action("API PATCH vm (hardware)", "PATCH", API + "{vm}", "change", {"memory": 256},
           effect=changes(200, VirtualMachine, "vm", memory_mb=256)),
    Action("API GET vm nics", "GET", API + "{vm}/nics", "view", effect=shows("{vm_mac}")),
    Action("API POST vm nics", "POST", API + "{vm}/nics", "change", {"type": "nat", "source": "default"},
           effect=creates(201, NetworkInterface, "NIC", hv_call="attach_nic", vm_id="{vm}", order=1)),
    Action("API DELETE vm nic", "DELETE", API + "{vm}/nics/{vm_mac}", "change", effect=lambda seen: nic_gone(seen, 200)),
    Action("admin VM hardware page", "GET", ADMIN + "vms/virtualmachine/{vm}/hardware/", "change", api=False,
           effect=shows('name="max_memory"')),
    Action("admin VM hardware (apply)", "POST", ADMIN + "vms/virtualmachine/{vm}/hardware/", "change",
           {"what": "hardware", "memory": "256", "max_memory": "512", "vcpus": "1", "max_vcpus": "1", "boot_order": ""}, api=False,
           effect=changes(302, VirtualMachine, "vm", memory_mb=256)),
    Action("admin VM hardware (remove NIC)", "POST", ADMIN + "vms/virtualmachine/{vm}/hardware/", "change",
           {"what": "remove_nic", "mac": "{vm_mac}"}, api=False, effect=lambda seen: nic_gone(seen, 302)),
    # --- day two: snapshots (the seeded VM runs and has snapshot seed-snap, with memory)
    Action("API GET snapshots", "GET", API + "{vm}/snapshots", "view", effect=shows("seed-snap")),
    Action("API POST snapshots", "POST", API + "{vm}/snapshots", "change", {"name": "new-snap", "memory": True},
           effect=creates(201, VmSnapshot, "snapshot", hv_call="create_snapshot", name="new-snap")),
    Action("API GET snapshot", "GET", API + "{vm}/snapshots/seed-snap", "view", effect=shows("seed-snap")),
    Action("API DELETE snapshot", "DELETE", API + "{vm}/snapshots/seed-snap", "change", effect=snapshot_gone(204)),
    Action("API POST snapshot revert", "POST", API + "{vm}/snapshots/seed-snap/revert", "change",
           effect=powers(200, "revert_snapshot", "revert to snapshot seed-snap", "running")),
    Action("admin VM take snapshot", "POST", ADMIN + "vms/virtualmachine/{vm}/snapshots/take/", "change",
           {"name": "new-snap", "memory": "on"}, api=False,
           effect=creates(302, VmSnapshot, "snapshot", hv_call="create_snapshot", name="new-snap")),
    *[Action(f"admin VM snapshot {a} page", "GET", ADMIN + f"vms/virtualmachine/{{vm}}/snapshots/seed-snap/{a}/", "change", api=False,
             effect=shows("seed-snap", 'id="vapor-snapshot-confirm"')) for a in ("revert", "delete")],
    Action("admin VM snapshot revert (confirm)", "POST", ADMIN + "vms/virtualmachine/{vm}/snapshots/seed-snap/revert/", "change",
           api=False, effect=powers(302, "revert_snapshot", "revert to snapshot seed-snap", "running")),
    Action("admin VM snapshot delete (confirm)", "POST", ADMIN + "vms/virtualmachine/{vm}/snapshots/seed-snap/delete/", "change",
           api=False, effect=snapshot_gone(302)),
    # --- issue 15: hypervisor hosts (any signed-in user reads them; only superusers change them here)
    *[dataclasses.replace(a, superuser_writes=True) for a in [
        Action("API GET hosts", "GET", HOSTS, "view", effect=shows("seed-host", "default")),
        Action("API POST hosts", "POST", HOSTS, "add", {"name": "h-new", "uri": "qemu+tcp://10.99.0.7/system"},
               effect=creates(201, Host, "host", hv_call="host_resources", name="h-new", health="up")),
        Action("API GET host", "GET", HOSTS + "/seed-host", "view", effect=shows("seed-host")),
        Action("API PATCH host", "PATCH", HOSTS + "/seed-host", "change", {"enabled": False},
               effect=changes(200, Host, "host", enabled=False)),
        Action("API DELETE host", "DELETE", HOSTS + "/seed-host", "delete", effect=host_gone(204)),
        Action("API POST host check", "POST", HOSTS + "/seed-host/check", "change", effect=changes(200, Host, "host", health="up")),
        Action("admin host list", "GET", ADMIN + "vms/host/", "view", api=False, effect=shows("seed-host")),
        Action("admin host change page", "GET", ADMIN + "vms/host/{host}/change/", "view", api=False, effect=shows("seed-host")),
        Action("admin host add page", "GET", ADMIN + "vms/host/add/", "add", api=False, effect=shows('name="uri"')),
        Action("admin host change (save)", "POST", ADMIN + "vms/host/{host}/change/", "change",
               {"uri": "qemu+tcp://10.99.0.5/system", "enabled": "on", "cpu_overcommit": "2", "memory_overcommit": "1", "labels": "{}"},
               api=False, effect=changes(302, Host, "host", cpu_overcommit=2.0)),
        Action("admin host check now", "POST", ADMIN + "vms/host/{host}/check/", "change", api=False,
               effect=changes(302, Host, "host", health="up")),
        Action("admin host action check_hosts", "POST", ADMIN + "vms/host/", "change",
               {"action": "check_hosts", "_selected_action": "{host}", "index": "0"}, api=False,
               effect=changes(302, Host, "host", health="up")),
        Action("admin host delete (confirm)", "POST", ADMIN + "vms/host/{host}/delete/", "delete", {"post": "yes"}, api=False,
               effect=host_gone(302)),
    ]],
    # --- several hosts: live migration (seed-mover runs on the default host; seed-migrating has a queued migration to h2)
    Action("API POST vm migrate", "POST", API + "{mover}/migrate", "change", {"host": "h2", "copy_storage": False},
           effect=migrated(202)),
    Action("API GET vm migrations", "GET", API + "{migrating}/migrations", "view", effect=shows('"destination":"h2"')),
    Action("API GET vm migration", "GET", API + "{migrating}/migrations/{migration}", "view", effect=shows('"status":"queued"')),
    Action("API POST vm migration cancel", "POST", API + "{migrating}/migrations/{migration}/cancel", "change",
           effect=migration_cancelled(202)),
    Action("admin VM migrate page", "GET", ADMIN + "vms/virtualmachine/{mover}/migrate/", "change", api=False,
           effect=shows('id="vapor-migrate-form"', '<option value="h2">h2</option>')),
    Action("admin VM migrate (submit)", "POST", ADMIN + "vms/virtualmachine/{mover}/migrate/", "change", {"host": "h2"},
           api=False, effect=migrated(302)),
    Action("admin VM migration cancel", "POST", ADMIN + "vms/virtualmachine/{migrating}/migrations/{migration}/cancel/", "change",
           api=False, effect=migration_cancelled(302)),
]  # fmt: skip


def expected_allowed(role: str, action: Action) -> bool:
    if action.superuser_writes and action.kind != "view":
        return role == "admin"
    return role in ("operator", "admin") or (role == "viewer" and action.kind == "view")


@pytest.fixture(scope="module")
def iso_bytes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(tmp_path_factory.mktemp("authz") / "seed.iso", label="Seed 1.0 amd64")


@pytest.fixture
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HypervisorSpy:
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    watcher = HypervisorSpy(FakeHypervisor(pool_dir=pool_dir))
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", watcher.get)
    return watcher


@pytest.fixture
def seeded(spy: HypervisorSpy, iso_dirs: IsoDirs, iso_bytes: Path, django_capture_on_commit_callbacks: Any) -> dict[str, str]:
    """A ready ISO, one downloading, one failed, a template, a running VM and a spare ISO file; the spy's counter starts at 0."""
    seed_iso = shutil.copyfile(iso_bytes, iso_dirs.search[0] / "seed.iso")
    spare = shutil.copyfile(iso_bytes, iso_dirs.search[0] / "spare.iso")
    digests = hash_file(seed_iso)
    iso = iso_register_path(path=str(seed_iso), meta=IsoMetadata(name="seed"), digests=digests)
    others = {}
    for status in (IsoStatus.DOWNLOADING, IsoStatus.FAILED):  # what cancel and retry act on
        path = shutil.copyfile(iso_bytes, iso_dirs.search[0] / f"{status}.iso")
        other = iso_register_path(path=str(path), meta=IsoMetadata(name=f"{status}-iso"), digests=digests)
        IsoImage.objects.filter(pk=other.pk).update(status=status, error="" if status == IsoStatus.DOWNLOADING else "seeded failure")
        others[f"iso_{status}"] = other.pk
    root = APIClient()
    root.force_authenticate(User.objects.create_superuser("seeder", password=None))
    template = root.post(API + "templates", {"name": "seed-tpl", "memory": 512, "vcpus": 1}, format="json")
    assert template.status_code == 201, template.content
    with django_capture_on_commit_callbacks(execute=True):
        vm = root.post(API + "create-enhanced", {"name": "seed-vm", "memory": 512, "vcpus": 1}, format="json")
    assert vm.status_code == 202, vm.content
    assert VirtualMachine.objects.get(name="seed-vm").status == "running"
    # day two: disks: the seed VM gets a disk (vda) and a CD-ROM drive (sda) holding the ISO "cd"
    cd_path = shutil.copyfile(iso_bytes, iso_dirs.search[0] / "cd.iso")
    cd_iso = iso_register_path(path=str(cd_path), meta=IsoMetadata(name="cd"), digests=digests)
    seed_vm = str(vm.json()["id"])
    assert root.post(API + seed_vm + "/disks", {"size": 1}, format="json").status_code == 201
    spy.inner.domains["seed-vm"].state = "shutoff"
    assert root.post(API + seed_vm + "/cdroms", {"iso": cd_iso.pk}, format="json").status_code == 201
    spy.inner.domains["seed-vm"].state = "running"
    others["cd_iso"] = cd_iso.pk
    # day two: snapshots, taken after the disks so its recorded hardware is the VM's (a revert is allowed)
    assert root.post(API + f"{vm.json()['id']}/snapshots", {"name": "seed-snap", "memory": True}, format="json").status_code == 201
    # The detach cell tests roles only (the snapshot guard has its own tests in tests/vms/test_disks_api.py):
    # the seed snapshot is recorded as holding no disk, so an allowed role may detach vda.
    VmSnapshot.objects.filter(name="seed-snap").update(disks=[])
    # several hosts: live migration: host h2 (the spy's fake reaches it, sharing its pool directory), a VM to move
    # (no snapshot, no ISO), and another with a queued migration to cancel (a VM being migrated refuses deletes and power actions).
    h2_uri = "qemu+tcp://10.99.0.2/system"
    spy.inner.peers[h2_uri] = FakeHypervisor(pool_dir=spy.inner.pool_dir)
    with django_capture_on_commit_callbacks(execute=True):
        mover = root.post(API + "create-enhanced", {"name": "seed-mover", "memory": 512, "vcpus": 1}, format="json")
    assert mover.status_code == 202, mover.content
    h2 = Host.objects.create(name="h2", uri=h2_uri)
    with django_capture_on_commit_callbacks(execute=True):
        migrating = root.post(API + "create-enhanced", {"name": "seed-migrating", "memory": 512, "vcpus": 1}, format="json")
    assert migrating.status_code == 202, migrating.content
    migrating_row = VirtualMachine.objects.get(name="seed-migrating")
    migration = VmMigration.objects.create(vm=migrating_row, source=migrating_row.host, destination=h2, copy_storage=False)
    others["migrating"] = str(migrating_row.pk)
    others["mover"] = str(mover.json()["id"])
    others["migration"] = str(migration.pk)
    spy.calls.clear()
    return {
        "vm": str(vm.json()["id"]),
        "iso": iso.pk,
        "template": "seed-tpl",
        "template_pk": str(template.json()["id"]),
        "spare_iso": str(spare),
        "vm_mac": VirtualMachine.objects.get(name="seed-vm").nics.get().mac,  # day two: hardware
        "host": str(Host.objects.create(name="seed-host", uri="qemu+tcp://10.99.0.5/system").pk),  # issue 15: hosts
        **others,
    }


def _fill(value: Any, seeds: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, seed in seeds.items():
            value = value.replace("{" + key + "}", seed)
    return value


def _client(role: str, user: User | None, api: bool) -> Any:
    if api:
        client: Any = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _send(client: Any, action: Action, seeds: dict[str, str]) -> Any:
    url = _fill(action.url, seeds)
    data = {key: _fill(value, seeds) for key, value in action.data.items()}
    method = getattr(client, action.method.lower())
    if action.api:
        return method(url, data, format="json") if action.method != "GET" else method(url)
    return method(url, data) if action.method == "POST" else method(url)


def _denied(role: str, action: Action, response: Any) -> bool:
    if action.api:
        return response.status_code == (401 if role == "anonymous" else 403)
    if role == "anonymous":
        return response.status_code == 302 and response["Location"].startswith("/admin/login/")
    return response.status_code == 403


@pytest.mark.sqlite_pass  # roles, not database behaviour: the PostgreSQL pass would only run 428 seeded cells again
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.name)
def test_cell(
    role: str, action: Action, spy: HypervisorSpy, seeded: dict[str, str], tally: Tally, django_capture_on_commit_callbacks: Any
) -> None:
    client = _client(role, make_role(role), action.api)
    before = rows()
    # Tasks are queued at commit; run them here (django-q2's sync mode), so their effect is seen and a denied cell's would be.
    with django_capture_on_commit_callbacks(execute=True) as queued:
        response = _send(client, action, seeded)
    case = f"{role} x {action.name}"
    if expected_allowed(role, action):
        seen = Seen(response=response, seeds=seeded, before=before, after=rows(), spy=spy, tasks=len(queued))
        effect = action.effect or shows()
        try:
            done, problem = effect(seen), ""
        except AssertionError as exc:
            done, problem = "", str(exc) or "the effect check failed"
        record_allowed(tally, SUITE, case, effect=not problem, detail=f"{response.status_code}: {done or problem}")
        assert not problem, (case, response.status_code, problem, response.content[:500])
        return
    leftovers = spy.total() + changed_rows(before, rows()) + len(queued)
    refused = _denied(role, action, response)
    tally.record(
        SUITE, case, refused=refused, leftovers=leftovers, detail=f"denied: {response.status_code}; hypervisor calls {dict(spy.calls)}"
    )
    assert refused and leftovers == 0, (case, response.status_code, dict(spy.calls), leftovers, response.content[:300])


def test_every_action_names_its_effect() -> None:
    """An allowed cell without an effect check would again prove only "not 401/403"."""
    assert [a.name for a in ACTIONS if a.effect is None] == []


# --- two projects: a member of another project against the default project's VM and template ------------

# The ISO library is shared by every project (its rights are Django permissions, not a project's), so its
# actions are not cross-project cells. Creates name the seeds' project: the member may not create there.
CROSS_ROLES = ("viewer", "operator", "admin")  # roles in project "other"; admin here is the project's admin, not a superuser
CROSS_ACTIONS = [
    dataclasses.replace(a, data={**a.data, "project": "default"}) if a.kind == "add" and a.method == "POST" else a
    for a in ACTIONS
    if "iso" not in a.name.lower() and not a.superuser_writes  # hosts are no project's either
]


def _hidden(action: Action, response: Any, seeds: dict[str, str]) -> bool:
    """What a refusal looks like to a member of another project: the object does not exist for them."""
    code, body = response.status_code, response.content.decode()
    seed_names = [seeds[key] for key in ("template",)] + ["seed-vm"]
    if action.api:
        if action.method == "GET" and "{" not in action.url:  # a list: 200 without the other project's objects
            return code == 200 and not any(f'"{name}"' in body for name in seed_names)
        if action.kind == "add":  # a viewer may create nowhere (403); others: the project is not found, on the field
            return code == 403 or (code == 404 and '"field":"project"' in body.replace(" ", ""))
        return code in (403, 404)
    if action.method == "GET" and action.url.endswith(("/virtualmachine/", "/vmtemplate/")):
        return code == 200 and not any(f">{name}<" in body for name in seed_names)
    if action.kind == "add" and action.method == "GET":  # the add page offers only the member's projects
        project_select = body.split('name="project"', 1)[-1].split("</select>", 1)[0]
        return code in (200, 403) and '<option value="default"' not in project_select
    if action.kind == "add":  # the form names the other project: refused on the field, nothing made
        return code in (200, 403)
    if action.data.get("action"):  # a list action on another project's object: refused or a no-op
        return code in (302, 403)
    return code == 403 or (code == 302 and response["Location"] == ADMIN)  # "does not exist" sends to the index


@pytest.mark.sqlite_pass  # as test_cell
@pytest.mark.parametrize("role", CROSS_ROLES)
@pytest.mark.parametrize("action", CROSS_ACTIONS, ids=lambda a: a.name)
def test_cross_project_cell(
    role: str, action: Action, spy: HypervisorSpy, seeded: dict[str, str], tally: Tally, django_capture_on_commit_callbacks: Any
) -> None:
    """Every cross-project cell is denied: nothing shown, no hypervisor call, no row changed, no task."""
    from projects.models import Project

    Project.objects.create(name="other")
    user = make_role(role, "other")
    client = _client(role, user, action.api)
    before = rows()
    with django_capture_on_commit_callbacks(execute=True) as queued:
        response = _send(client, action, seeded)
    host_listing = HOST_LISTING if action.kind == "add" and not action.api else frozenset()
    leftovers = spy.total(ignoring=host_listing) + changed_rows(before, rows()) + len(queued)
    hidden = _hidden(action, response, seeded)
    tally.record(
        SUITE,
        f"{role} of another project x {action.name}",
        refused=hidden,
        leftovers=leftovers,
        detail=f"{response.status_code}; hypervisor calls {dict(spy.calls)}",
    )
    assert hidden and leftovers == 0, (role, action.name, response.status_code, dict(spy.calls), leftovers, response.content[:400])


# --- CSRF on session-authenticated writes ---------------------------------------------


CSRF_WRITES = [
    ("API POST templates", API + "templates", {"name": "tpl-csrf", "memory": 512, "vcpus": 1}, True),
    ("API POST vm stop", API + "{vm}/stop", {}, True),
    ("API DELETE iso", API + "isos/{iso}", {}, True),
    ("admin template add (save)", ADMIN + "vms/vmtemplate/add/", {**TEMPLATE_FORM, "name": "tpl-csrf"}, False),
    ("admin VM action stop", ADMIN + "vms/virtualmachine/", {"action": "action_stop", "_selected_action": "{vm}", "index": "0"}, False),
    ("admin VM page button stop", ADMIN + "vms/virtualmachine/{vm}/action/stop/", {}, False),
    ("admin VM page button refresh", ADMIN + "vms/virtualmachine/{vm}/refresh/", {}, False),
    ("API POST vm nics", API + "{vm}/nics", {"type": "nat", "source": "default"}, True),  # day two: hardware
    (
        "admin VM hardware (apply)",
        ADMIN + "vms/virtualmachine/{vm}/hardware/",
        {"what": "hardware", "memory": "256", "max_memory": "512", "vcpus": "1", "max_vcpus": "1", "boot_order": ""},
        False,
    ),
    ("admin VM take snapshot", ADMIN + "vms/virtualmachine/{vm}/snapshots/take/", {"name": "csrf-snap", "memory": "on"}, False),
    ("admin VM disks attach", ADMIN + "vms/virtualmachine/{vm}/disks/attach/", {"size": "1", "bus": "virtio"}, False),  # day two: disks
    ("API POST vm migrate", API + "{mover}/migrate", {"host": "h2", "copy_storage": False}, True),  # several hosts: live migration
    ("admin VM migrate (submit)", ADMIN + "vms/virtualmachine/{mover}/migrate/", {"host": "h2"}, False),
]


@pytest.mark.parametrize(("name", "url", "data", "api"), CSRF_WRITES, ids=[w[0] for w in CSRF_WRITES])
def test_session_writes_need_the_csrf_token(
    name: str, url: str, data: dict[str, Any], api: bool, spy: HypervisorSpy, seeded: dict[str, str], tally: Tally
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_role("operator"))  # type: ignore[arg-type]
    url = _fill(url, seeded)
    data = {key: _fill(value, seeded) for key, value in data.items()}
    method = client.delete if url.endswith(seeded["iso"]) else client.post

    def send(**headers: Any) -> Any:
        if api:
            return method(url, data, content_type="application/json", **headers)
        return method(url, data, **headers)

    before = rows()
    refused = send()
    leftovers = spy.total() + changed_rows(before, rows())
    tally.record(SUITE, f"operator (session, no CSRF token) x {name}", refused=refused.status_code == 403, leftovers=leftovers,
                 detail=f"{refused.status_code}")  # fmt: skip
    assert refused.status_code == 403 and leftovers == 0, (name, refused.status_code, leftovers, refused.content[:300])

    client.get(ADMIN)  # any page with a form sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = send(HTTP_X_CSRFTOKEN=token) if api else method(url, {**data, "csrfmiddlewaretoken": token})
    changed = changed_rows(before, rows())
    ok = accepted.status_code not in (401, 403) and changed > 0  # the write happened this time
    record_allowed(tally, SUITE, f"operator (session, CSRF token) x {name}", effect=ok,
                         detail=f"{accepted.status_code}: {changed} row(s) written")  # fmt: skip
    assert ok, (name, accepted.status_code, changed, accepted.content[:300])


# --- the VNC password ------------------------------------------------------------------

PASSWORD = "Qz7vNc9x"


def test_vnc_password_is_in_no_response_page_log_or_task(
    spy: HypervisorSpy, seeded: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any, tally: Tally,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    client = Client()
    client.force_login(make_role("admin"))  # type: ignore[arg-type]
    seen: dict[str, int] = {"API responses": 0, "admin pages": 0, "log records": 0, "task payloads": 0, "stored rows": 0}

    def look(where: str, text: str) -> None:
        seen[where] += text.count(PASSWORD)

    body = {"name": "vnc-vm", "memory": 512, "vcpus": 1, "graphics": {"type": "vnc", "password": PASSWORD}}
    with django_capture_on_commit_callbacks(execute=True):  # provisioning runs inline (Conf.SYNC)
        created = client.post(API + "create-enhanced", body, content_type="application/json")
    assert created.status_code == 202, created.content
    vm = VirtualMachine.objects.get(name="vnc-vm")
    assert f'passwd="{PASSWORD}"' in spy.inner.domains["vnc-vm"].xml  # libvirt was given it: the search below can fail
    look("API responses", created.content.decode())
    dry = client.post(API + "create-enhanced?dry_run=true", {**body, "name": "vnc-dry"}, content_type="application/json")
    assert dry.status_code == 200, dry.content
    look("API responses", dry.content.decode())
    for url in (API, API + str(vm.pk), API + "templates"):
        look("API responses", client.get(url).content.decode())

    # Queued, not run: the ORM broker's row holds the signed, pickled task.
    monkeypatch.setattr(Conf, "SYNC", False)
    with django_capture_on_commit_callbacks(execute=True):
        queued = client.post(API + "create-enhanced", {**body, "name": "vnc-queued"}, content_type="application/json")
    assert queued.status_code == 202, queued.content
    look("API responses", queued.content.decode())
    assert OrmQ.objects.exists()
    for package in OrmQ.objects.all():
        look("task payloads", package.payload + repr(SignedPackage.loads(package.payload)))
    assert Task.objects.exists()
    for task in Task.objects.all():
        look("task payloads", repr((task.name, task.func, task.args, task.kwargs, task.result, task.hook, task.group)))
    for row in VirtualMachine.objects.values():
        look("stored rows", repr(row))

    changelist = ADMIN + "vms/virtualmachine/"
    for url in (changelist, f"{changelist}{vm.pk}/change/", f"{changelist}{vm.pk}/history/", changelist + "add/"):
        page = client.get(url)
        assert page.status_code == 200, url
        look("admin pages", page.content.decode())
    with_errors = client.post(changelist + "add/", {**VM_FORM, "name": "bad name!", "graphics_password": PASSWORD})
    assert with_errors.status_code == 200 and b"errorlist" in with_errors.content
    look("admin pages", with_errors.content.decode())
    dry_page = client.post(changelist + "add/", {**VM_FORM, "name": "vnc-admin-dry", "graphics_password": PASSWORD, "_dryrun": "Dry run"})
    assert dry_page.status_code == 200
    look("admin pages", dry_page.content.decode())

    assert caplog.records  # the flow does log
    look("log records", caplog.text + "".join(repr(r.args) for r in caplog.records))
    for where, count in seen.items():
        tally.record(SUITE, f"VNC password x {where}", refused=count == 0, leftovers=count)
    assert all(count == 0 for count in seen.values()), seen


# --- deployment checks -------------------------------------------------------------------


def test_check_deploy_is_clean_with_production_settings(tally: Tally) -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        VAPOR_DEBUG="0", VAPOR_SECRET_KEY="k3y-" + "Rm4tW8qZ2xB6nJ0cV5hL9sD3fG7kP1y" * 2, VAPOR_ALLOWED_HOSTS="vapor.example.com",
    )  # fmt: skip
    clean = result.returncode == 0 and "WARNINGS" not in result.stderr
    tally.record(SUITE, "manage.py check --deploy (production settings)", refused=clean, detail=(result.stderr + result.stdout)[-300:])
    assert clean, result.stderr + result.stdout
