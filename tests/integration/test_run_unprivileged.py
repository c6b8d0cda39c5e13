"""The run command as a user would start it: scripts/run.sh, as root, against the real libvirtd.

Only the set-up keeps root. The web server and every worker process run as
the unprivileged user VAPOR_USER (read from /proc), and through them the
portal still reaches libvirtd (a VM is created and deleted: the web process
validates against the daemon, the worker defines the domain) and the worker
still writes the ISO download directory (a download from a local server).
libvirtd already runs; run.sh must find it and leave it running.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.images import make_image
from tests.support.isos import make_iso

pytestmark = pytest.mark.libvirt

ROOT = Path(__file__).resolve().parents[2]
USER = "vapor"
PASSWORD = "Unpriv-" + uuid.uuid4().hex
# Waits for something to come up or finish; a bound on the test, never an assertion on speed.
PATIENCE_STEPS = 1800


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def session_processes(sid: int) -> dict[int, tuple[str, list[int]]]:
    """pid -> (command line, [real, effective, saved, filesystem uid]) of every process in session `sid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) != sid or fields[0] == "Z":  # after ")": state, ppid, pgrp, session; a zombie holds nothing
            continue
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        found[int(entry.name)] = (cmdline, [int(u) for u in uids])
    return found


class Portal:
    def __init__(self, base: str, token: str = "") -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            return exc.code, json.loads(text) if text.startswith(("{", "[")) else text

    def until(self, path: str, done: Any) -> Any:
        for _ in range(PATIENCE_STEPS):
            status, body = self.call("GET", path)
            assert status == 200, body
            if done(body):
                return body
            time.sleep(0.2)
        pytest.fail(f"{path} never reached the expected state: {body}")


@pytest.fixture
def iso_server(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    make_iso(served / "tiny.iso", label="UNPRIV")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tiny.iso"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def run_sh(vm_env: VmEnv, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Portal]]:
    if os.geteuid() != 0:
        pytest.fail("run.sh is run as root (the README's run command); this test must be too", pytrace=False)
    # In vm_env's directories (0755 from /): QEMU must read the downloaded ISO too.
    data, isos, log = vm_env.pool_dir.parent / "var", vm_env.isos, tmp_path / "run.log"
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VAPOR_", "DATABASE_URL", "DJANGO_"))}
    environ.update(
        VAPOR_DATA_DIR=str(data),
        VAPOR_ISO_DOWNLOAD_DIR=str(isos),
        VAPOR_ISO_DIRS=str(isos),
        VAPOR_DISK_ROOTS=str(vm_env.disks),
        VAPOR_LISTEN=f"127.0.0.1:{port}",
        VAPOR_ADMIN_PASSWORD=PASSWORD,
        VAPOR_DOWNLOAD_ALLOW_PRIVATE="1",  # the ISO comes from this machine
        VAPOR_VIRT_TYPE="qemu",
        VAPOR_Q_WORKERS="1",
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=environ, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    portal = Portal(f"http://127.0.0.1:{port}")
    try:
        for _ in range(PATIENCE_STEPS):
            assert process.poll() is None, log.read_text()
            try:
                status, _ = portal.call("GET", "/api/v1/virtualmachines/isos")
            except OSError:
                time.sleep(0.2)
                continue
            assert status in (401, 403), status
            break
        token = subprocess.run(
            [sys.executable, "manage.py", "drf_create_token", "admin"],
            cwd=ROOT, env=environ, capture_output=True, text=True, check=True, timeout=120,
        ).stdout.split()[2]  # fmt: skip
        portal.token = token
        yield process, data, portal
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def test_run_sh_serves_and_works_as_an_unprivileged_user(run_sh, iso_server: str, vm_env: VmEnv):
    process, data, portal = run_sh
    user = pwd.getpwnam(USER)
    assert user.pw_uid != 0

    # Every Django process run.sh started (the server, qcluster and its workers) runs as the user, all four uids.
    managed = {pid: seen for pid, seen in session_processes(process.pid).items() if "manage.py" in seen[0]}
    assert any("manage.py serve" in cmd for cmd, _ in managed.values()), managed
    assert sum("qcluster" in cmd for cmd, _ in managed.values()) >= 2, managed  # the cluster and its worker(s)
    assert {pid: uids for pid, (_, uids) in managed.items() if uids != [user.pw_uid] * 4} == {}
    if Path("/run/vapor/libvirtd.conf").exists():
        # A libvirtd of scripts/libvirtd.sh lets the user's group onto its socket: after the set-up, nothing
        # run.sh started keeps root (no socket bridge); only run.sh itself waits as root to stop them.
        rooted = {pid: cmd for pid, (cmd, uids) in session_processes(process.pid).items() if 0 in uids and pid != process.pid}
        assert rooted == {}, rooted
    # The kept secret key is the user's, and only the user's.
    secret = (data / "secret_key").stat()
    assert (secret.st_uid, secret.st_mode & 0o777) == (user.pw_uid, 0o600)
    assert (data.stat().st_uid, data.stat().st_mode & 0o777) == (user.pw_uid, 0o700)

    # The server serves the static files the set-up collected (DEBUG is off).
    with urllib.request.urlopen(portal.base + "/static/admin/css/base.css", timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/css")

    # The worker writes the download directory.
    status, iso = portal.call("POST", "/api/v1/virtualmachines/isos", {"url": iso_server, "name": "unpriv"})
    assert status == 202, iso
    done = portal.until(
        f"/api/v1/virtualmachines/isos/{iso['id']}", lambda body: body["status"] not in ("pending", "downloading", "hashing")
    )
    assert done["status"] == "ready", done
    downloaded = vm_env.isos / Path(done["path"]).name
    assert downloaded.exists() and downloaded.stat().st_uid == user.pw_uid

    # The web process asks libvirtd (validation), the worker defines and starts the domain, the web process deletes it.
    # disk 1 is a full copy of a file outside the pools: qemu-img, run by the worker, writes the volume libvirtd made.
    base = make_image(vm_env.disks / "base.qcow2")
    name = "unpriv-" + uuid.uuid4().hex[:8]
    try:
        payload = {
            "name": name, "memory": 128, "vcpus": 1, "storage_pool": vm_env.pool, "iso_path": done["path"],
            "disks": [{"size": 1}, {"clone_from": str(base)}],
        }  # fmt: skip
        status, vm = portal.call("POST", "/api/v1/virtualmachines/create-enhanced", payload)
        assert status == 202, vm
        created = portal.until(f"/api/v1/virtualmachines/{vm['id']}", lambda body: body["status"] not in ("pending", "provisioning"))
        assert created["status"] == "running", created
        assert virsh("domstate", name).stdout.strip() == "running"
        # Lent to QEMU while the guest runs; given back to the user (libvirt remembers the owner) once it stops.
        virsh("destroy", name)
        owners = {path.name: path.stat().st_uid for path in vm_env.pool_dir.iterdir()}
        assert owners == {f"{name}-disk0.qcow2": user.pw_uid, f"{name}-disk1.qcow2": user.pw_uid}, owners
        status, body = portal.call("DELETE", f"/api/v1/virtualmachines/{vm['id']}")
        assert status == 204, body
        assert virsh("dominfo", name, check=False).returncode != 0
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)

    # Ctrl-C (TERM here) stops everything run.sh started, and nothing else: libvirtd still answers.
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert session_processes(process.pid) == {}
    assert virsh("list").returncode == 0
