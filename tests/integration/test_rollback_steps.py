"""Rollback at each provisioning step, against the real libvirtd + QEMU.

The request goes through the API and is validated; its task is held back
(captured on-commit callbacks), the host is then changed the way the world
changes between a check and a use (a volume name taken, a clone source
spoiled, an image locked by another process, the autostart directory
refusing links), and the task runs. Each time libvirt or QEMU refuses in its
own words, the VM is `failed` with them, the event log shows the failed step
and each undo in reverse order, no volume Vapor made is left in the pool, no
domain is left, and the files Vapor did not make are byte-identical.

Also here: a volume Vapor never made, already in the pool, is refused before
anything runs, and IDE disks on the `pc` machine are defined and started by
the real daemon (the in-memory hypervisor accepts any XML).
"""

from __future__ import annotations

import contextlib
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import unique, virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import CREATE_URL
from tests.support.images import make_image, sha256
from vms.hypervisor.documents.domain import parse_domain
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
AUTOSTART_DIR = Path("/etc/libvirt/qemu/autostart")


def accept(vm_api, capture, payload: dict) -> tuple[VirtualMachine, list[Callable[[], object]]]:
    """POST the request; return the VM and its held-back task (not run yet)."""
    with capture() as queued:
        response = vm_api.post(CREATE_URL, payload, format="json")
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(pk=response.json()["id"])
    assert vm.status == "provisioning" and not vm.events.exclude(step="accepted").exists()
    return vm, list(queued)


def run(queued: list[Callable[[], object]], vm: VirtualMachine) -> VirtualMachine:
    for callback in queued:
        callback()
    vm.refresh_from_db()
    return vm


def events(vm: VirtualMachine) -> list[tuple[str, str]]:
    """(step, status) after `accepted`; a clone step without its source path."""
    return [(re.sub(r"^clone /\S+ to ", "clone to ", e.step), e.status) for e in vm.events.exclude(step="accepted")]


def pool_volumes(env: VmEnv) -> set[str]:
    """What libvirt lists in the pool (refreshed first), not only what is on disk."""
    virsh("pool-refresh", env.pool)
    return {line.split()[0] for line in virsh("vol-list", "--pool", env.pool).stdout.splitlines()[2:] if line.strip()}


def no_domain(name: str) -> bool:
    return virsh("dominfo", name, check=False).returncode != 0


def foreign_file(path: Path, text: str) -> Path:
    path.write_bytes(text.encode() * 4096)
    path.chmod(0o644)
    return path


# --- a volume Vapor never made ---------------------------------------------------------


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "not-yet-listed"])
def test_a_foreign_volume_in_the_pool_under_a_new_disks_name_is_409_and_left_byte_identical(vm_api, run_tasks, vm_env: VmEnv, listed):
    """`listed`: libvirt has refreshed the pool and knows the file as a volume; else the file is only on disk."""
    name = unique("it-vx")
    foreign = foreign_file(vm_env.pool_dir / f"{name}-disk0.qcow2", "someone's data\n")
    before = sha256(foreign)
    if listed:
        assert pool_volumes(vm_env) == {foreign.name}

    with run_tasks():
        payload = {"name": name, "memory": 256, "vcpus": 1, "disks": [{"size": 1}], "storage_pool": vm_env.pool}
        response = vm_api.post(CREATE_URL, payload, format="json")

    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (409, "volume_exists", "disks.0"), body
    assert sha256(foreign) == before
    assert pool_volumes(vm_env) == {foreign.name}
    assert not VirtualMachine.objects.filter(name=name).exists() and no_domain(name)


# --- create volume ----------------------------------------------------------------------


def test_create_volume_refused_because_the_name_was_taken_after_validation(vm_api, django_capture_on_commit_callbacks, vm_env: VmEnv):
    name = unique("it-cv")
    existing = make_image(vm_env.disks / "data.qcow2")
    vm, queued = accept(vm_api, django_capture_on_commit_callbacks,
                        {"name": name, "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool,
                         "disks": [{"size": 1}, {"size": 1}, {"path": str(existing)}]})  # fmt: skip
    foreign = foreign_file(vm_env.pool_dir / f"{name}-disk1.qcow2", "made by hand meanwhile\n")
    virsh("pool-refresh", vm_env.pool)
    before = {p: sha256(p) for p in (foreign, existing)}

    vm = run(queued, vm)

    assert vm.status == "failed"
    assert vm.error == f"create volume {name}-disk1.qcow2 failed: storage volume '{name}-disk1.qcow2' exists already"  # libvirt's
    assert events(vm) == [
        (f"create volume {name}-disk0.qcow2", "done"),
        (f"create volume {name}-disk1.qcow2", "failed"),
        (f"create volume {name}-disk0.qcow2", "undone"),
    ]
    assert pool_volumes(vm_env) == {foreign.name}
    assert no_domain(name)
    assert {p: sha256(p) for p in (foreign, existing)} == before


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Nobody, root included, may create or remove entries in `path` meanwhile."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_create_volume_refused_by_a_pool_directory_that_takes_no_new_files(vm_api, django_capture_on_commit_callbacks, vm_env: VmEnv):
    name = unique("it-ro")
    existing = make_image(vm_env.disks / "data.qcow2")
    before = sha256(existing)
    vm, queued = accept(vm_api, django_capture_on_commit_callbacks,
                        {"name": name, "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool,
                         "disks": [{"size": 1}, {"path": str(existing)}]})  # fmt: skip

    with immutable(vm_env.pool_dir):
        vm = run(queued, vm)

    assert vm.status == "failed"
    assert vm.error.startswith(f"create volume {name}-disk0.qcow2 failed: ")
    assert "Operation not permitted" in vm.error  # the file system's answer, through libvirt
    assert events(vm) == [(f"create volume {name}-disk0.qcow2", "failed")]  # nothing was done, nothing to undo
    assert pool_volumes(vm_env) == set()
    assert no_domain(name)
    assert sha256(existing) == before


# --- clone ------------------------------------------------------------------------------


def spoil_qcow2(path: Path) -> None:
    """Set an incompatible-feature bit QEMU does not know (as a newer QEMU might): it refuses to open the image."""
    with path.open("r+b") as image:
        image.seek(72)  # qcow2 v3 header: incompatible_features
        image.write(struct.pack(">Q", 1 << 63))


@pytest.mark.parametrize("spoil", ["unknown-feature", "removed"])
def test_clone_refused_because_the_source_changed_after_validation(vm_api, django_capture_on_commit_callbacks, vm_env: VmEnv, spoil):
    name = unique("it-cl")
    template = make_image(vm_env.disks / "template.qcow2")
    existing = make_image(vm_env.disks / "data.qcow2")
    before = sha256(existing)
    vm, queued = accept(vm_api, django_capture_on_commit_callbacks,
                        {"name": name, "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool,
                         "disks": [{"size": 1}, {"clone_from": str(template)}, {"path": str(existing)}]})  # fmt: skip
    if spoil == "removed":
        template.unlink()
    else:
        spoil_qcow2(template)

    vm = run(queued, vm)

    assert vm.status == "failed"
    assert vm.error.startswith(f"clone {template} to {name}-disk1.qcow2 failed: ")
    if spoil == "removed":
        assert vm.error.endswith(f"{template} does not exist")  # the driver looks before qemu-img does
    else:
        assert "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000" in vm.error  # qemu-img's words
    assert events(vm) == [
        (f"create volume {name}-disk0.qcow2", "done"),
        (f"clone to {name}-disk1.qcow2", "failed"),
        (f"create volume {name}-disk0.qcow2", "undone"),
    ]
    assert pool_volumes(vm_env) == set()
    assert no_domain(name)
    assert sha256(existing) == before


# --- set autostart ------------------------------------------------------------------------


def test_set_autostart_refused_by_libvirt_undoes_define_and_volumes(vm_api, django_capture_on_commit_callbacks, vm_env: VmEnv):
    """libvirt marks a domain for autostart with a symlink in its autostart directory; a directory that
    takes no new entries (immutable, for the length of the task) makes that fail. libvirt 9.0 then logs
    "Failed to create symlink ...: Operation not permitted" and still answers success, so the driver
    reads the mark back and the step fails on what libvirt reports. The test holds the real-daemon
    lock, so no other test marks a domain meanwhile."""
    name = unique("it-as")
    existing = make_image(vm_env.disks / "data.qcow2")
    before = sha256(existing)
    vm, queued = accept(vm_api, django_capture_on_commit_callbacks,
                        {"name": name, "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool, "autostart": True,
                         "graphics": {"type": "none"}, "disks": [{"size": 1}, {"path": str(existing)}]})  # fmt: skip
    AUTOSTART_DIR.mkdir(parents=True, exist_ok=True)

    with immutable(AUTOSTART_DIR):
        vm = run(queued, vm)

    assert vm.status == "failed"
    assert vm.error == (
        f"set autostart failed: libvirt answered success, but autostart of domain '{name}' is still off"
        " (libvirtd's log says why, e.g. it could not create the autostart link)"
    )
    assert events(vm) == [
        (f"create volume {name}-disk0.qcow2", "done"),
        ("define domain", "done"),
        ("set autostart", "failed"),
        ("define domain", "undone"),
        (f"create volume {name}-disk0.qcow2", "undone"),
    ]
    assert pool_volumes(vm_env) == set()
    assert no_domain(name)
    assert not (AUTOSTART_DIR / f"{name}.xml").exists()
    assert sha256(existing) == before


# --- start ---------------------------------------------------------------------------------


@contextlib.contextmanager
def held_by_another_process(image: Path) -> Iterator[None]:
    """qemu-nbd serving `image` read-only holds QEMU's image lock, as a VM or a backup job would."""
    socket = image.with_suffix(".nbd.sock")
    nbd = subprocess.Popen(["qemu-nbd", "--read-only", "-f", "qcow2", "-k", str(socket), str(image)])
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert nbd.poll() is None and time.monotonic() < deadline, "qemu-nbd did not start"
            time.sleep(0.1)
        yield
    finally:
        nbd.terminate()
        nbd.wait(timeout=10)


def test_start_refused_by_qemu_undoes_everything(vm_api, django_capture_on_commit_callbacks, vm_env: VmEnv):
    name = unique("it-st")
    existing = make_image(vm_env.disks / "data.qcow2")
    before = sha256(existing)
    vm, queued = accept(vm_api, django_capture_on_commit_callbacks,
                        {"name": name, "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool, "autostart": True,
                         "graphics": {"type": "none"}, "disks": [{"size": 1}, {"path": str(existing)}]})  # fmt: skip

    with held_by_another_process(existing):
        vm = run(queued, vm)

    assert vm.status == "failed"
    assert vm.error.startswith("start domain failed: ")
    assert 'Failed to get "write" lock' in vm.error and f"Is another process using the image [{existing}]?" in vm.error  # QEMU's
    assert events(vm) == [
        (f"create volume {name}-disk0.qcow2", "done"),
        ("define domain", "done"),
        ("set autostart", "done"),
        ("start domain", "failed"),
        ("define domain", "undone"),
        (f"create volume {name}-disk0.qcow2", "undone"),
    ]
    assert pool_volumes(vm_env) == set()
    assert no_domain(name)
    assert not (AUTOSTART_DIR / f"{name}.xml").exists()
    assert sha256(existing) == before


# --- IDE on the pc machine -------------------------------------------------------------------


def test_ide_disks_on_the_pc_machine_are_defined_and_started_by_libvirt(vm_api, run_tasks, vm_env: VmEnv):
    name = unique("it-ide")
    with run_tasks():
        payload = {"name": name, "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool, "graphics": {"type": "none"},
                   "disks": [{"size": 1, "bus": "ide"}, {"size": 1, "bus": "ide"}]}  # fmt: skip
        response = vm_api.post(CREATE_URL, payload, format="json")
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name=name)
    assert vm.status == "running", vm.error
    assert virsh("domstate", name).stdout.strip() == "running"
    live_xml = virsh("dumpxml", name).stdout
    live = parse_domain(live_xml)
    assert "machine='pc-i440fx-" in live_xml  # libvirt expanded `pc` to its versioned i440fx machine
    assert [(d.target_dev, d.bus) for d in live.disks] == [("hda", "ide"), ("hdb", "ide")]
    assert "<controller type='ide'" in live_xml
