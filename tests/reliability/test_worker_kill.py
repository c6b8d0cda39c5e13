"""Faults injected: the worker is SIGKILLed mid-task, with the ORM broker (issue 5).

A real `manage.py qcluster` (django-q2, ORM broker, its own SQLite database)
is killed with SIGKILL, process group and all, while it hashes a large ISO
and while it copies a template into a VM's volume on the real libvirtd. A
new cluster then receives the task again (django-q2 hands out a task whose
lock is older than `retry`, set short here with VAPOR_TASK_TIMEOUT=10 and
VAPOR_TASK_RETRY=12) and it completes once in effect: the right digests, one
ISO row; one domain, one volume per disk (the half-copy replaced, not
trusted), and no more deliveries than `max_attempts`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import remove_pool, unique, virsh
from tests.integration.vm_support import shared_dir
from tests.reliability.portal import Backend
from tests.support.isos import make_iso

pytestmark = [pytest.mark.reliability, pytest.mark.django_db, pytest.mark.libvirt]

SUITE = "faults: worker killed"
MAX_ATTEMPTS = 3  # vaporsite/settings.py Q_CLUSTER
TIMEOUTS = {"VAPOR_TASK_TIMEOUT": "10", "VAPOR_TASK_RETRY": "12"}
WAIT = 90.0  # generous: retry (12 s) + the work again, on a loaded machine


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[Backend, Path]]:
    top = shared_dir("vapor-kill-")  # 0755 under /var/tmp: QEMU reads what lives here
    iso_dir, disks, pool_dir = top / "isos", top / "disks", top / "pool"
    for directory in (iso_dir, disks, pool_dir):
        directory.mkdir(mode=0o755)
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    data_dir.mkdir()
    logs.mkdir()
    backend = Backend(data_dir, iso_dir, logs, VAPOR_DISK_ROOTS=str(disks), VAPOR_ALLOWED_HOSTS="127.0.0.1,testserver", **TIMEOUTS)
    backend.migrate()
    try:
        yield backend, top
    finally:
        backend.stop_all()
        print(backend.cluster_logs())
        shutil.rmtree(top, ignore_errors=True)


def _digests(path: Path) -> tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(4 * 1024 * 1024):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _settled(backend: Backend, func: str) -> bool:
    """django-q2's monitor has stored the task's result and then acknowledged it (removed it from the queue)."""
    return bool(_attempts(backend, func)) and backend.query("SELECT COUNT(*) FROM django_q_ormq")[0][0] == 0


def _attempts(backend: Backend, func: str) -> list[tuple[int, int]]:
    """(success, attempt_count) of django-q2's result rows for tasks running `func`."""
    return [(int(s), int(n)) for s, n in backend.query("SELECT success, attempt_count FROM django_q_task WHERE func = ?", func)]


def test_worker_killed_while_hashing_an_iso(backend: tuple[Backend, Path], tally):
    portal, top = backend
    path = make_iso(top / "isos" / "big.iso")
    with path.open("r+b") as stream:  # 512 MiB of real bytes after the ISO's own: the hash takes seconds
        stream.seek(0, os.SEEK_END)
        block = bytes(range(256)) * 4096
        while stream.tell() < 512 * 1024 * 1024:
            stream.write(block)
    out = portal.shell(
        "from isos.services import IsoMetadata, iso_register_path\n"
        f"print('ISO', iso_register_path(path={str(path)!r}, meta=IsoMetadata()).pk)"
    )
    iso_id = next(line.split()[1] for line in out.splitlines() if line.startswith("ISO "))
    size = path.stat().st_size

    def progress() -> tuple[str, int]:
        status, done = portal.query("SELECT status, bytes_done FROM isos_isoimage WHERE id = ?", iso_id)[0]
        return str(status), int(done)

    first = portal.start_cluster()
    portal.wait_for(lambda: progress()[1] > 0, WAIT, "the first worker to start hashing")
    portal.kill(first)
    status, done = progress()
    assert status == "hashing" and 0 < done < size, (status, done, size)  # killed mid-hash

    portal.start_cluster()
    expected = _digests(path)  # meanwhile, the digests as hashlib sees them
    portal.wait_for(lambda: progress()[0] != "hashing", WAIT, "the task to be delivered again and finish")
    # The cluster's monitor stores the task's result, then acknowledges it, just after the task returns.
    portal.wait_for(lambda: _settled(portal, "isos.tasks.hash_iso"), WAIT, "django-q2 to store and acknowledge the task")
    rows = portal.query("SELECT status, md5_hash, sha256_hash, bytes_done FROM isos_isoimage")
    attempts = _attempts(portal, "isos.tasks.hash_iso")
    queued = portal.query("SELECT COUNT(*) FROM django_q_ormq")[0][0]
    ok = rows == [("ready", *expected, size)] and len(attempts) == 1 and attempts[0][0] == 1 and attempts[0][1] <= MAX_ATTEMPTS
    tally.record(
        SUITE,
        "SIGKILL during hashing a 512 MiB ISO",
        refused=ok,
        leftovers=int(queued) + max(len(rows) - 1, 0),
        detail=f"killed at {done} of {size} bytes; then {rows[0][0] if rows else 'no row'}, attempts {attempts}",
    )
    assert rows == [("ready", *expected, size)]
    assert attempts == [(1, 1)]  # one result: the delivery that finished (django-q2 counts attempts that end)
    assert queued == 0


def test_worker_killed_while_cloning_a_template(backend: tuple[Backend, Path], tally):
    portal, top = backend
    pool, name = unique("rel-kill-pool"), unique("rel-kill")
    pool_dir, template = top / "pool", top / "disks" / "template.raw"
    with template.open("wb") as stream:  # 768 MiB of real data: the copy takes seconds
        block = bytes(range(1, 256)) * 4112
        while stream.tell() < 768 * 1024 * 1024:
            stream.write(block)
    virsh("pool-define-as", pool, "dir", "--target", str(pool_dir))
    try:
        virsh("pool-start", pool)
        payload = {
            "name": name,
            "memory": 128,
            "vcpus": 1,
            "disks": [{"clone_from": str(template), "source_format": "raw", "format": "qcow2"}],
            "graphics": {"type": "none"},
            "storage_pool": pool,
        }
        out = portal.shell(
            "import json\n"
            "from django.contrib.auth.models import User\n"
            "from rest_framework.test import APIClient\n"
            "c = APIClient(); c.force_authenticate(User.objects.create_superuser('killer'))\n"
            f"r = c.post('/api/v1/virtualmachines/create-enhanced', json.loads({json.dumps(payload)!r}), format='json')\n"
            "print(r.status_code, json.dumps(r.json()))"
        )
        code, body = next(line for line in out.splitlines() if line[:3].isdigit()).split(" ", 1)
        assert code == "202", out
        vm_id = json.loads(body)["id"]
        volume = pool_dir / f"{name}-disk0.qcow2"

        def copying() -> bool:
            return volume.exists() and volume.stat().st_blocks * 512 > 16 * 1024 * 1024

        def status() -> str:
            return str(portal.query("SELECT status FROM vms_virtualmachine WHERE id = ?", vm_id)[0][0])

        first = portal.start_cluster()
        portal.wait_for(copying, WAIT, "the first worker to be copying the template")
        portal.kill(first)
        steps = portal.query("SELECT step, status FROM vms_vmevent WHERE vm_id = ? ORDER BY id", vm_id)
        assert not [s for s in steps if s[0].startswith("clone") and s[1] == "done"], steps  # killed mid-copy
        assert status() == "provisioning"

        portal.start_cluster()
        portal.wait_for(lambda: status() != "provisioning", WAIT, "the task to be delivered again and finish")
        portal.wait_for(lambda: _settled(portal, "vms.tasks.provision_vm"), WAIT, "django-q2 to store and acknowledge the task")
        events = portal.query("SELECT step, status, message FROM vms_vmevent WHERE vm_id = ? ORDER BY id", vm_id)
        final, error = portal.query("SELECT status, error FROM vms_virtualmachine WHERE id = ?", vm_id)[0]
        domains = virsh("list", "--all", "--name").stdout.split().count(name)
        volumes = sorted(p.name for p in pool_dir.iterdir())
        attempts = _attempts(portal, "vms.tasks.provision_vm")
        replaced = [e for e in events if e[0].startswith("clone") and e[1] == "info" and "interrupted attempt" in e[2]]
        clones_done = [e for e in events if e[0].startswith("clone") and e[1] == "done"]
        ok = (final, domains, volumes, len(replaced), len(clones_done)) == ("running", 1, [volume.name], 1, 1)
        ok = ok and len(attempts) == 1 and attempts[0][1] <= MAX_ATTEMPTS
        tally.record(
            SUITE,
            "SIGKILL during a full clone of a 768 MiB template",
            refused=ok,
            leftovers=max(domains - 1, 0) + max(len(volumes) - 1, 0),
            detail=f"then {final}; {domains} domain(s), volumes {volumes}, attempts {attempts}",
        )
        assert (final, error) == ("running", "")
        assert domains == 1  # no double define
        assert volumes == [volume.name]  # no double clone
        assert len(replaced) == 1 and len(clones_done) == 1, events  # the half-copy was removed and made anew, once
        assert "running" in virsh("domstate", name).stdout
        assert attempts == [(1, 1)]
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)
        remove_pool(pool)


def test_task_retry_is_configurable_and_must_outlast_the_timeout():
    from vaporsite import env

    assert env.load({}).q_retry == env.load({}).q_timeout + 120  # the default, as before
    assert env.load({"VAPOR_TASK_TIMEOUT": "10", "VAPOR_TASK_RETRY": "12"}).q_retry == 12
    refused = env.load({"VAPOR_TASK_TIMEOUT": "60", "VAPOR_TASK_RETRY": "30"})
    assert [p.variable for p in refused.problems] == ["VAPOR_TASK_RETRY"]
    assert refused.q_retry == 180  # a retry shorter than the timeout would run a live task twice
