"""Library ISOs on remote hosts (issue 15, point 5), against fake hosts: copied once, checked, reused, removed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from isos.services import iso_delete
from tests.fakes import FakeHosts, FakeHypervisor
from tests.support.api import create_vm
from tests.support.isos import make_iso, register_ready
from vms import tasks
from vms.hypervisor.documents.domain import parse_domain
from vms.models import Host, IsoHostCopy, VirtualMachine
from vms.services import iso_copies
from vms.services.cdroms import cdrom_change
from vms.services.iso_copies import ISO_POOL, host_is_local, iso_on_host

pytestmark = pytest.mark.django_db

REMOTE = "qemu+tcp://10.99.1.2/system"


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHosts:
    hosts = FakeHosts(pool_root=tmp_path / "hosts")
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", hosts.get)
    monkeypatch.setattr(iso_copies, "ISO_POOL_DIR", str(tmp_path / "remote-isos"))
    return hosts


def remote_host(hosts: FakeHosts, uri: str) -> FakeHypervisor:
    """A fake remote host whose ISO pool is a directory of its own (ISO_POOL_DIR would be shared by the fakes)."""
    fake = hosts.add(uri)
    fake.pools[ISO_POOL] = fake.pool_dir.with_name(f"{fake.pool_dir.name}-isos")
    fake.pools[ISO_POOL].mkdir()
    return fake


@pytest.fixture
def remote(hosts: FakeHosts) -> FakeHypervisor:
    """The default host is made remote: every VM created lands there (validation still asks the default fake)."""
    hosts.get()  # the portal's default host first
    fake = remote_host(hosts, REMOTE)
    Host.objects.update_or_create(name="default", defaults={"uri": REMOTE})  # made again after a transactional test's flush
    return fake


def iso_vm(vm_api, run_tasks, name: str, iso: str) -> VirtualMachine:
    return create_vm(vm_api, run_tasks, {"name": name, "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "iso_path": iso})


def cdrom_sources(fake: FakeHypervisor, vm: str) -> list[str]:
    return [d.source for d in parse_domain(fake.domains[vm].xml).disks if d.device == "cdrom"]


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("", True),
        ("qemu:///system", True),
        ("qemu+unix:///system", True),
        ("qemu:///session", True),
        ("test:///default", True),
        ("qemu+tcp://10.99.1.2/system", False),
        ("qemu+ssh://root@kvm2/system", False),
        ("qemu+tls://kvm2.example.org/system", False),
        ("qemu+tcp://localhost/system", False),
    ],
)
def test_which_hosts_are_local(settings, uri: str, local: bool) -> None:
    assert host_is_local(Host(name="h", uri=uri)) is local


def test_a_vm_on_a_remote_host_boots_from_a_checked_copy_made_once(vm_api, run_tasks, iso_dirs, hosts, remote):
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso", boot="bios"))
    first = iso_vm(vm_api, run_tasks, "r1", iso.pk)
    assert first.status == "running", first.error
    copy = IsoHostCopy.objects.get()
    assert (copy.iso_id, copy.host.name, copy.status) == (iso.pk, "default", "ready")
    assert copy.sha256 == iso.sha256_hash and copy.checked_at is not None
    assert copy.bytes_done == copy.bytes_total == iso.size and copy.progress == 100.0
    assert copy.path == str(remote.pools[ISO_POOL] / f"{iso.pk}.iso")
    assert Path(copy.path).read_bytes() == Path(iso.path).read_bytes()
    assert cdrom_sources(remote, "r1") == [copy.path]  # the domain opens the copy, not the portal's file
    copy_event = first.events.get(step=f"copy ISO {iso.name} to host default", status="done")
    assert copy_event is not None
    assert first.events.filter(step=copy_event.step, status="info", message__contains="sha256 checked").exists()

    second = iso_vm(vm_api, run_tasks, "r2", iso.pk)
    assert second.status == "running", second.error
    assert remote.calls["upload_volume_file"] == 1  # reused, not copied again
    assert cdrom_sources(remote, "r2") == [copy.path]
    assert hosts.default is not None and hosts.default.calls["upload_volume_file"] == 0


def test_a_copy_that_vanished_is_made_again(vm_api, run_tasks, iso_dirs, remote):
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    iso_vm(vm_api, run_tasks, "v1", iso.pk)
    copy = IsoHostCopy.objects.get()
    Path(copy.path).unlink()  # someone cleaned the host's pool
    vm = iso_vm(vm_api, run_tasks, "v2", iso.pk)
    assert vm.status == "running", vm.error
    assert remote.calls["upload_volume_file"] == 2 and Path(copy.path).is_file()
    assert IsoHostCopy.objects.get().status == "ready"


def test_a_copy_whose_sha256_differs_on_the_host_fails_the_vm_cleanly(vm_api, run_tasks, iso_dirs, remote):
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    remote.corrupt_uploads = True
    vm = iso_vm(vm_api, run_tasks, "bad", iso.pk)
    assert vm.status == "failed"
    assert f"copy ISO {iso.name} to host default failed" in vm.error
    assert f"not the library's {iso.sha256_hash}: copy deleted" in vm.error
    copy = IsoHostCopy.objects.get()
    assert copy.status == "failed" and "sha256" in copy.error and copy.path == ""
    # Nothing left behind: no copy in the ISO pool, no volume, no domain.
    assert list(remote.pools[ISO_POOL].iterdir()) == []
    assert list(remote.pool_dir.iterdir()) == [] and remote.domains == {}
    # The next VM tries again, and succeeds once the link is good.
    remote.corrupt_uploads = False
    again = iso_vm(vm_api, run_tasks, "good", iso.pk)
    assert again.status == "running", again.error
    assert IsoHostCopy.objects.get().status == "ready"


def test_a_local_host_never_copies(vm_api, run_tasks, iso_dirs, hosts):
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    vm = iso_vm(vm_api, run_tasks, "loc", iso.pk)
    assert vm.status == "running", vm.error
    fake = hosts.get()
    assert fake.calls["upload_volume_file"] == 0 and not IsoHostCopy.objects.exists()
    assert cdrom_sources(fake, "loc") == [iso.path]


def test_deleting_the_iso_removes_its_copies_and_a_down_host_keeps_a_record(vm_api, run_tasks, iso_dirs, hosts, remote):
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    other_uri = "qemu+tcp://10.99.2.2/system"
    other = remote_host(hosts, other_uri)
    h3 = Host.objects.create(name="h3", uri=other_uri)
    up_copy = Path(iso_on_host(iso=iso, host=Host.objects.get(name="default")))
    down_copy = Path(iso_on_host(iso=iso, host=h3))
    assert up_copy.is_file() and down_copy.is_file() and other.calls["upload_volume_file"] == 1
    hosts.down(other_uri)
    iso_id = iso.pk

    notes = iso_delete(iso=iso)

    assert not up_copy.exists()  # the host that answered: gone, and so is its row
    assert down_copy.exists()
    assert notes == [IsoHostCopy.objects.get().error]
    assert "h3 is not removed yet" in notes[0] and "once the host answers" in notes[0]
    left = IsoHostCopy.objects.get()
    assert (left.iso_id, left.iso_ref, left.host.name) == (None, iso_id, "h3")

    hosts.up(other_uri)
    tasks.refresh_vm_states()  # the minute's schedule tries again
    assert not down_copy.exists() and not IsoHostCopy.objects.exists()


def test_a_cdrom_change_on_a_remote_host_inserts_the_copy(vm_api, run_tasks, iso_dirs, remote):
    first = register_ready(make_iso(iso_dirs.search[0] / "one.iso", label="ONE"))
    second = register_ready(make_iso(iso_dirs.search[0] / "two.iso", label="TWO"))
    vm = iso_vm(vm_api, run_tasks, "cd", first.pk)
    drive = cdrom_change(vm=vm, target_dev="sda", iso=second.pk)
    copy = IsoHostCopy.objects.get(iso=second)
    assert drive.path == copy.path and copy.status == "ready"
    assert remote.calls["upload_volume_file"] == 2


def test_two_tasks_needing_the_same_iso_copy_it_once(transactional_db, iso_dirs, hosts, remote, monkeypatch):
    """The second task finds the first one's copy running, waits, then uses it."""
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    host = Host.objects.get(name="default")
    started, release = threading.Event(), threading.Event()
    real_upload = remote.upload_volume_file

    def slow_upload(*args, **kwargs):
        started.set()
        assert release.wait(10)
        return real_upload(*args, **kwargs)

    waited = threading.Event()

    def wait() -> None:
        waited.set()
        time.sleep(0.05)

    monkeypatch.setattr(remote, "upload_volume_file", slow_upload)
    monkeypatch.setattr(iso_copies, "_wait", wait)
    paths: list[str] = []

    def task() -> None:
        try:
            paths.append(iso_on_host(iso=iso, host=host))
        finally:
            connection.close()

    worker = threading.Thread(target=task)
    worker.start()
    assert started.wait(10)
    waiter = threading.Thread(target=task)
    waiter.start()
    assert waited.wait(10)  # the second task saw the copy running and waits for it
    release.set()
    worker.join(10)
    waiter.join(10)
    assert len(paths) == 2 and paths[0] == paths[1]
    assert remote.calls["upload_volume_file"] == 1 and IsoHostCopy.objects.count() == 1


def test_the_copies_show_in_the_iso_detail_and_its_admin_page(vm_api, run_tasks, iso_dirs, remote, admin_client):
    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    iso_vm(vm_api, run_tasks, "shown", iso.pk)
    copy = IsoHostCopy.objects.get()
    body = vm_api.get(f"/api/v1/virtualmachines/isos/{iso.pk}").json()
    assert body["host_copies"] == [
        {"host": "default", "status": "ready", "progress": 100.0, "bytes_done": iso.size, "bytes_total": iso.size,
         "path": copy.path, "sha256": iso.sha256_hash, "checked_at": body["host_copies"][0]["checked_at"], "error": ""},
    ]  # fmt: skip
    assert body["host_copies"][0]["checked_at"]
    assert "host_copies" not in vm_api.get("/api/v1/virtualmachines/isos").json()["isos"][0]  # the list stays as it was
    IsoHostCopy.objects.update(status="copying", bytes_done=(iso.size or 0) // 4)
    page = admin_client.get(f"/admin/isos/isoimage/{iso.pk}/change/").content.decode()
    assert "Copies on hosts" in page and "default: Copying 25%" in page
