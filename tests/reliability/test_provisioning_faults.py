"""Issue 5, faults injected: libvirt fails at each provisioning step in turn (in-memory hypervisor).

The VM has everything that can go wrong at once: a new volume, a full clone of
a template, an existing disk, an install ISO from the library, autostart on
and a VNC password. The request goes through the API and the task runs; the
hypervisor fails one call. Promised (vms/jobs.py): the
finished steps are undone in reverse order, so nothing Vapor created is left
(no volume file in the pool, no domain), existing disks and the clone source
are byte-identical, the VM is `failed` with libvirt's words in `error`, the
ISO's use count and last use are unchanged, the password is forgotten, and
the event log shows the failed step and each undo.

When an undo fails too, the rollback goes on with the other steps, the VM is
still `failed`, and the event log says `undo_failed` for what is left; what
is left is named there and removed by deleting the failed VM once libvirt
answers again (vm_delete). Those cases record what the rollback left in
their detail and count as leftovers what remains after that delete.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from isos.models import IsoImage
from tests.fakes import FakeHypervisor
from tests.support.api import create_vm
from tests.support.images import make_image, sha256
from tests.support.isos import make_iso, register_ready
from vaporsite.errors import HypervisorError
from vms.models import VirtualMachine

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "faults: provisioning"
STEPS = ("create_volume", "clone_volume", "define_domain", "set_autostart", "start_domain")
ERRORS = {
    "create_volume": "cannot allocate 1073741824 bytes in file 'x': No space left on device",
    "clone_volume": "internal error: qemu-img convert failed: Input/output error",
    "define_domain": "XML error: unsupported configuration: machine type 'q35' not found",
    "set_autostart": "Failed to create symlink '/etc/libvirt/qemu/autostart/x.xml': Permission denied",
    "start_domain": "internal error: process exited while connecting to monitor",
}


class World:
    """The files and rows a failed provisioning must leave as they were."""

    def __init__(self, root: Path, iso_dir: Path) -> None:
        self.base = make_image(root / "template.qcow2")
        self.existing = make_image(root / "data.qcow2")
        self.digests = {p: sha256(p) for p in (self.base, self.existing)}
        path = make_iso(iso_dir / "install.iso", label="Debian 12 amd64")
        self.iso = register_ready(path, name="install")

    def payload(self, name: str, *, clone_first: bool) -> dict:
        new, clone = {"size": 1}, {"clone_from": str(self.base)}
        return {
            "name": name,
            "memory": 512,
            "vcpus": 1,
            "disks": [*([clone, new] if clone_first else [new, clone]), {"path": str(self.existing)}],
            "iso_path": "install",
            "autostart": True,
            "graphics": {"type": "vnc", "port": -1, "password": "s3cretpw"},
        }

    def leftovers(self, hv: FakeHypervisor) -> list[str]:
        left = [f"volume {p.name}" for p in sorted(hv.pool_dir.iterdir())]
        left += [f"domain {name}" for name in hv.domains]
        left += [f"{p.name} changed" for p, digest in self.digests.items() if sha256(p) != digest]
        iso = IsoImage.objects.get(pk=self.iso.pk)
        if (iso.use_count, iso.last_used) != (0, None):
            left.append(f"ISO use count {iso.use_count}, last used {iso.last_used}")
        return left


@pytest.fixture
def world(tmp_path: Path, settings, iso_dirs, hv) -> World:
    root = tmp_path / "shared"
    root.mkdir()
    settings.VAPOR = dataclasses.replace(settings.VAPOR, disk_roots=(root,), virt_type="auto")
    return World(root, iso_dirs.search[0])


def plan(world: World, name: str, *, clone_first: bool) -> list[str]:
    volumes = [f"create volume {name}-disk0.qcow2", f"clone {world.base} to {name}-disk1.qcow2"]
    if clone_first:
        volumes = [f"clone {world.base} to {name}-disk0.qcow2", f"create volume {name}-disk1.qcow2"]
    return [*volumes, "define domain", "set autostart", "start domain"]


def events(vm: VirtualMachine) -> list[tuple[str, str]]:
    return [(e.step, e.status) for e in vm.events.exclude(step="accepted").order_by("pk")]


@pytest.mark.parametrize("clone_first", [False, True], ids=["new-then-clone", "clone-then-new"])
@pytest.mark.parametrize("method", STEPS)
def test_libvirt_fails_at_each_step(vm_api, run_tasks, hv, world, tally, method, clone_first):
    name = f"pf-{method.replace('_', '-')}-{int(clone_first)}"
    order = plan(world, name, clone_first=clone_first)
    first_word = {"create_volume": "create", "clone_volume": "clone"}.get(method)
    failing = next(step for step in order if step.split()[0] == first_word) if first_word else method.replace("_", " ")
    hv.fail[method] = HypervisorError(ERRORS[method])
    vm = create_vm(vm_api, run_tasks, world.payload(name, clone_first=clone_first))
    vm.refresh_from_db()

    at = order.index(failing)
    expected = [(s, "done") for s in order[:at]] + [(failing, "failed")]
    expected += [(s, "undone") for s in reversed(order[:at]) if s != "set autostart"]
    left = world.leftovers(hv)
    survived = vm.status == "failed" and vm.error == f"{failing} failed: {ERRORS[method]}" and events(vm) == expected
    survived = survived and vm.graphics_password_encrypted == ""
    tally.record(
        SUITE,
        f"{method} fails ({'clone, then new volume' if clone_first else 'new volume, then clone'}; existing disk, ISO, autostart)",
        refused=survived,
        leftovers=len(left),
        detail=(
            f"error: {vm.error!r}; events: {', '.join(f'{s}={st}' for s, st in events(vm))}" + (f"; left: {left}" if left else "")
        ).replace(f"{world.base.parent}/", ""),
    )
    assert vm.status == "failed"
    assert vm.error == f"{failing} failed: {ERRORS[method]}"
    assert events(vm) == expected
    assert vm.graphics_password_encrypted == ""
    assert left == []
    assert hv.calls[method] == 1  # failed once, not tried again


def test_undo_of_the_volumes_fails_too(vm_api, run_tasks, hv, world, tally):
    """define fails, then deleting the volumes fails: both stay, named by undo_failed; deleting the VM removes them."""
    hv.fail["define_domain"] = HypervisorError(ERRORS["define_domain"])
    hv.fail["delete_volume"] = HypervisorError("cannot unlink file: Device or resource busy")
    vm = create_vm(vm_api, run_tasks, world.payload("pf-undo-vol", clone_first=False))
    vm.refresh_from_db()
    order = plan(world, "pf-undo-vol", clone_first=False)
    after_rollback = world.leftovers(hv)
    log = events(vm)
    undo_messages = list(vm.events.filter(status="undo_failed").values_list("step", "message"))

    del hv.fail["delete_volume"], hv.fail["define_domain"]  # libvirt answers again
    response = vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}")
    after_delete = world.leftovers(hv)
    expected = [(order[0], "done"), (order[1], "done"), ("define domain", "failed"), (order[1], "undo_failed"), (order[0], "undo_failed")]
    survived = vm.status == "failed" and ERRORS["define_domain"] in vm.error and log == expected and response.status_code == 204
    tally.record(
        SUITE,
        "define_domain fails, then delete_volume fails during the rollback",
        refused=survived,
        leftovers=len(after_delete),
        detail=f"rollback left {after_rollback} (named in undo_failed events); "
        f"DELETE of the failed VM: {response.status_code}, then left {after_delete}",
    )
    assert vm.status == "failed" and vm.error == f"define domain failed: {ERRORS['define_domain']}"
    assert log == expected
    assert after_rollback == [
        "volume pf-undo-vol-disk0.qcow2",
        "volume pf-undo-vol-disk1.qcow2",
    ]  # what the promise allows: the volumes it named
    assert [message for _, message in undo_messages] == ["cannot unlink file: Device or resource busy"] * 2
    assert response.status_code == 204
    assert after_delete == [] and not VirtualMachine.objects.filter(pk=vm.pk).exists()


def test_undo_of_the_domain_fails_too(vm_api, run_tasks, hv, world, tally):
    """start fails, then undefining fails: the volumes are still removed; the domain stays until the VM is deleted."""
    hv.fail["start_domain"] = HypervisorError(ERRORS["start_domain"])
    hv.fail["undefine_domain"] = HypervisorError("Requested operation is not valid: cannot undefine domain with nvram")
    vm = create_vm(vm_api, run_tasks, world.payload("pf-undo-dom", clone_first=False))
    vm.refresh_from_db()
    order = plan(world, "pf-undo-dom", clone_first=False)
    after_rollback = world.leftovers(hv)
    log = events(vm)

    del hv.fail["undefine_domain"], hv.fail["start_domain"]
    response = vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}")
    after_delete = world.leftovers(hv)
    expected = [(s, "done") for s in order[:4]] + [("start domain", "failed"), ("define domain", "undo_failed")]
    expected += [(order[1], "undone"), (order[0], "undone")]
    survived = vm.status == "failed" and ERRORS["start_domain"] in vm.error and log == expected and response.status_code == 204
    tally.record(
        SUITE,
        "start_domain fails, then undefine_domain fails during the rollback",
        refused=survived,
        leftovers=len(after_delete),
        detail=f"rollback left {after_rollback} (named in an undo_failed event); "
        f"DELETE of the failed VM: {response.status_code}, then left {after_delete}",
    )
    assert vm.status == "failed" and vm.error == f"start domain failed: {ERRORS['start_domain']}"
    assert log == expected
    assert after_rollback == ["domain pf-undo-dom"]
    assert response.status_code == 204
    assert after_delete == [] and not VirtualMachine.objects.filter(pk=vm.pk).exists()
