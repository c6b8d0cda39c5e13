"""Faults injected: libvirtd goes away while Vapor runs, then comes back (issue 5).

Vapor reaches the real daemon through a UNIX-socket relay this test owns
(`qemu+unix:///system?socket=<relay>`). Stopping the relay closes every
connection Vapor holds and refuses new ones, which is exactly what a client
sees while libvirtd restarts; starting it again is the daemon coming back.
The shared daemon itself is never stopped, so the other suites using it at
the same time are not disturbed.

While the daemon is away, requests that need libvirt answer 503
`hypervisor_unavailable` with words saying libvirt is unreachable (not a 500,
not a hang); once it is back, the same requests work in the same process,
through a new connection (a dead cached one is replaced).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.integration.conftest import hypervisor, remove_pool, virsh  # noqa: F401 (fixture used by vm_env)
from tests.integration.vm_support import VmEnv, shared_dir, vm_env  # noqa: F401 (fixture)
from tests.reliability.portal import Backend
from tests.support.api import CREATE_URL
from tests.support.factories import VirtualMachineFactory
from vaporsite.errors import HypervisorError, ServiceUnavailable
from vms.hypervisor import get_hypervisor
from vms.hypervisor.errors import from_libvirt
from vms.models import VirtualMachine

pytestmark = [pytest.mark.reliability, pytest.mark.libvirt, pytest.mark.django_db]

SUITE = "faults: libvirtd restart"
DAEMON_SOCKET = "/run/libvirt/libvirt-sock"


class Relay:
    """Forwards a UNIX socket to libvirtd's; `stop()` cuts every connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.path.unlink(missing_ok=True)  # new connections: "No such file or directory", as with no daemon
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed by stop()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DAEMON_SOCKET)
            with self._lock:
                self._open += [client, upstream]
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay() -> Iterator[Relay]:
    top = shared_dir("vapor-relay-")
    relay = Relay(top / "libvirt-sock")
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()
        top.joinpath("libvirt-sock").unlink(missing_ok=True)
        top.rmdir()


@pytest.fixture
def relayed(relay: Relay, vm_env: VmEnv, settings) -> VmEnv:  # noqa: F811 (the fixture imported above)
    """vm_env (a scratch pool on the real daemon), with Vapor talking to libvirtd through the relay."""
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, libvirt_uri=f"qemu+unix:///system?socket={relay.path}")
    return vm_env


def _payload(name: str, pool: str) -> dict[str, object]:
    return {"name": name, "memory": 128, "vcpus": 1, "disks": [{"size": 1}], "graphics": {"type": "none"}, "storage_pool": pool}


def _assert_unavailable(response, what: str) -> None:
    body = response.json()
    assert response.status_code == 503, (what, response.status_code, body)
    assert body["code"] == "hypervisor_unavailable", body
    assert "libvirt is unreachable" in body["detail"], body


def test_requests_while_the_daemon_is_away_get_503_and_work_again_once_it_is_back(vm_api, run_tasks, relay: Relay, relayed: VmEnv, tally):
    name = "rel-restart-" + relayed.pool.rsplit("-", 1)[-1]
    try:
        vm = VirtualMachineFactory.create(name=name + "-row", memory_mb=128)
        assert relayed.pool in {p.name for p in get_hypervisor().list_pools()}  # the daemon answers through the relay

        relay.stop()  # libvirtd goes away
        response = vm_api.post(CREATE_URL, _payload(name, relayed.pool), format="json")
        _assert_unavailable(response, "create-enhanced")
        start = vm_api.post(f"/api/v1/virtualmachines/{vm.pk}/start")
        _assert_unavailable(start, "start")
        detail = vm_api.get(f"/api/v1/virtualmachines/{vm.pk}")  # the detail page still answers, the state says why it is unknown
        assert detail.status_code == 200
        assert "libvirt is unreachable" in detail.json()["state"], detail.json()
        leftovers = VirtualMachine.objects.filter(name=name).count()
        down = response.status_code == 503
        tally.record(SUITE, "create-enhanced while libvirtd is down", refused=down, leftovers=leftovers, detail="503")
        tally.record(SUITE, "VM action while libvirtd is down", refused=start.status_code == 503, detail="503")
        assert leftovers == 0
        assert VirtualMachine.objects.get(pk=vm.pk).status == "running"  # not marked missing on a guess

        relay.start()  # libvirtd is back; Vapor was not restarted
        with run_tasks():
            response = vm_api.post(CREATE_URL, _payload(name, relayed.pool), format="json")
        assert response.status_code == 202, response.json()
        created = VirtualMachine.objects.get(name=name)
        assert created.status == "running", (created.status, created.error)
        assert virsh("list", "--name").stdout.split().count(name) == 1
        tally.record(SUITE, "create-enhanced once libvirtd is back (same process)", refused=True, detail="202, running")
    finally:
        relay.stop()
        relay.start()
        for domain in (name,):
            virsh("destroy", domain, check=False)
            virsh("undefine", domain, "--nvram", check=False)


def test_a_cached_connection_that_died_is_replaced(relay: Relay, relayed: VmEnv, tally):
    driver = get_hypervisor()  # one driver held across the restart, as a long-lived caller would
    try:
        assert relayed.pool in {p.name for p in driver.list_pools()}
        relay.stop()
        # The first call on the dead connection and the reconnect attempt both say "unavailable".
        errors: list[HypervisorError] = []
        for _ in range(2):
            with pytest.raises(ServiceUnavailable) as caught:
                driver.list_pools()
            errors.append(caught.value)
        assert all(e.status == 503 and "libvirt is unreachable" in e.message for e in errors), [e.message for e in errors]
        relay.start()
        before = relay.accepted
        assert relayed.pool in {p.name for p in driver.list_pools()}
        assert relay.accepted == before + 1  # a new connection, not the dead one
        tally.record(SUITE, "held driver: calls while down are 503, then it reconnects", refused=True, detail=errors[0].message[:120])
    finally:
        driver.close()


def _http(url: str, token: str, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # our own loopback server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_running_portal_answers_503_then_works_again_without_a_restart(relay: Relay, tmp_path: Path, tally):
    """The same, against `runserver` in a process of its own: the long-running server recovers on its own."""
    pool_dir = shared_dir("vapor-relay-pool-")
    pool = "rel-relay-" + pool_dir.name.rsplit("-", 1)[-1].lower()
    virsh("pool-define-as", pool, "dir", "--target", str(pool_dir))
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    data_dir.mkdir()
    logs.mkdir()
    iso_dir = tmp_path / "isos"  # apart from the pool: an ISO directory never holds a writable disk
    iso_dir.mkdir()
    backend = Backend(data_dir, iso_dir, logs, VAPOR_LIBVIRT_URI=f"qemu+unix:///system?socket={relay.path}")
    try:
        virsh("pool-start", pool)
        backend.migrate()
        out = backend.shell(
            "from django.contrib.auth.models import User\n"
            "from rest_framework.authtoken.models import Token\n"
            "print('TOKEN', Token.objects.create(user=User.objects.create_superuser('relay')).key)"
        )
        token = next(line.split()[1] for line in out.splitlines() if line.startswith("TOKEN "))
        url = backend.start_server() + CREATE_URL + "?dry_run=1"
        payload = _payload("rel-relay-vm", pool)
        before = _http(url, token, payload)
        assert before[0] == 200, before
        relay.stop()
        down = _http(url, token, payload)
        relay.start()
        after = _http(url, token, payload)
        ok = down[0] == 503 and down[1].get("code") == "hypervisor_unavailable" and after[0] == 200
        case = "running portal (runserver): 503 while libvirtd is down, 200 once back"
        tally.record(SUITE, case, refused=ok, detail=f"{down[0]} then {after[0]}")
        assert down[0] == 503, down
        assert down[1]["code"] == "hypervisor_unavailable" and "libvirt is unreachable" in str(down[1]["detail"]), down
        assert after[0] == 200, after
    finally:
        backend.stop_all()
        remove_pool(pool)
        shutil.rmtree(pool_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (1, "internal error: client socket is closed"),
        (38, "End of file while reading data: Input/output error"),
        (38, "Cannot write data: Broken pipe"),
        (39, "Cannot recv data: Connection reset by peer"),
        # A remote host gone silent (its network, not its daemon), seen by libvirt's keepalive (tests/multihost).
        (1, "internal error: connection closed due to keepalive timeout"),
    ],
)
def test_a_connection_lost_mid_call_is_503_not_500(code: int, message: str):
    error = from_libvirt(code, message)
    assert (type(error), error.status, error.code) == (ServiceUnavailable, 503, "hypervisor_unavailable")
    assert error.message.startswith(message) and "libvirt is unreachable" in error.message


def test_other_system_errors_stay_500():
    error = from_libvirt(38, "cannot open file '/var/lib/x.qcow2': Permission denied")
    assert (type(error), error.status) == (HypervisorError, 500)


ROOT = Path(__file__).resolve().parents[2]


def _libvirtd(command: str) -> None:
    import subprocess

    done = subprocess.run(["bash", str(ROOT / "scripts" / "libvirtd.sh"), command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"scripts/libvirtd.sh {command} failed (the test needs the daemon this script started): {done.stderr}"


def test_the_real_daemon_restarted_while_a_guest_runs(vm_api, run_tasks, hypervisor, vm_env: VmEnv, tally):  # noqa: F811 (fixtures)
    """The real libvirtd is stopped and started again (`scripts/libvirtd.sh stop-daemon` / `start`, like
    `systemctl restart libvirtd`): while it is away requests get 503, afterwards the same process works,
    and the guest that was running kept running."""
    name = "rel-real-" + vm_env.pool.rsplit("-", 1)[-1]
    with run_tasks():
        response = vm_api.post(CREATE_URL, _payload(name, vm_env.pool), format="json")
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name=name)
    assert vm.status == "running", vm.error
    _libvirtd("stop-daemon")
    try:
        down = vm_api.post(CREATE_URL, _payload(name + "-b", vm_env.pool), format="json")
        _assert_unavailable(down, "create-enhanced while the daemon is stopped")
        action = vm_api.post(f"/api/v1/virtualmachines/{vm.pk}/reboot")
        _assert_unavailable(action, "reboot while the daemon is stopped")
        tally.record(SUITE, "real restart: create-enhanced while stopped", refused=True,
                     leftovers=VirtualMachine.objects.filter(name=name + "-b").count(), detail="503")  # fmt: skip
        tally.record(SUITE, "real restart: VM action while stopped", refused=True, detail="503")
        assert not VirtualMachine.objects.filter(name=name + "-b").exists()
    finally:
        _libvirtd("start")
        # The session's shared driver (tests/integration/conftest.py) held a connection to the old daemon:
        # like any caller it would get one 503 before reconnecting, so let the later tests start afresh.
        hypervisor.close()
    detail = vm_api.get(f"/api/v1/virtualmachines/{vm.pk}").json()
    assert detail["state"] == "running", detail  # the guest survived the daemon's restart
    with run_tasks():
        again = vm_api.post(CREATE_URL, _payload(name + "-c", vm_env.pool), format="json")
    assert again.status_code == 202, again.json()
    assert VirtualMachine.objects.get(name=name + "-c").status == "running"
    tally.record(SUITE, "real restart: the guest kept running, new requests work without restarting Vapor", refused=True)
