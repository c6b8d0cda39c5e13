"""What bench.consoles_bench's parts share: the guests, the server process and its figures, tickets and websockets.

The guests are TCG domains named `bench-con-<random>-...`, 64 MiB, no network, VNC on the daemon's loopback,
the first serial port on a pty, booting a 512-byte boot sector that echoes the serial port (ECHO_BOOT_SECTOR).
The server is the product's `manage.py serve` in a child process (`server_command`), with bench.serve_settings
(its websockets go to `bench.console_server.websocket_application`, the product's console application behind the
bench-only hook), on its own SQLite database and data directory, with the run's superuser and API token.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import django_setup, require, say

URI = "qemu:///system"
HOST = "127.0.0.1"
MIB = 1024**2

# The guest's only code: the boot sector SeaBIOS loads at 0:7C00. GNU as, `.code16`, linked at 0x7c00:
#   cli; ds = ss = 0; sp = 0x7c00
#   IVT[0x0C] (IRQ4 on the master PIC, which SeaBIOS left at base 8) = 0000:isr
#   LCR 0x3fb = 0x03 (8N1); IER 0x3f9 = 0x01 (received-data interrupt); MCR 0x3fc = 0x0b (DTR, RTS, OUT2)
#   unmask IRQ4 on port 0x21; sti; idle: hlt; jmp idle
#   isr: push ax, dx; while LSR (0x3fd) bit 0: al = RBR (0x3f8), wait for LSR bit 5 (THR empty), THR = al
#        EOI (0x20 to port 0x20); pop dx, ax; iret
# The guest sleeps in hlt between interrupts, so an idle guest costs the host next to nothing, and every byte
# written to the serial port comes back once, from the guest's own code, through QEMU's UART and the pty.
ECHO_BOOT_SECTOR = bytes.fromhex(
    "fa31c08ed88ed0bc007cc7063000327cc70632000000bafb03b003eebaf903b001eebafc03b00beee42124efe621fbf4ebfd5052"
    "bafd03eca8017416baf803ec88c4bafd03eca82074fbbaf80388e0eeebe2b020e6205a58cf"
)


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=120)


def check_daemon() -> None:
    done = subprocess.run(["virsh", "-c", URI, "list"], capture_output=True, text=True, timeout=30, check=False)
    require(done.returncode == 0, f"libvirtd does not answer on {URI} ({done.stderr.strip()}); start it: bash scripts/libvirtd.sh start")


def echo_disk(path: Path) -> Path:
    """A 1 MiB raw disk whose MBR is the echo boot sector (SeaBIOS does not boot a 64 KiB one)."""
    image = bytearray(MIB)
    image[: len(ECHO_BOOT_SECTOR)] = ECHO_BOOT_SECTOR
    image[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(image))
    path.chmod(0o644)
    return path


def domain_xml(name: str, disk: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/><target dev='sda' bus='sata'/></disk>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='vga'/></video>
  </devices>
</domain>
"""


def start_guests(prefix: str, workdir: Path, names: Sequence[str]) -> list[str]:
    """Define and start one echo guest per name (`prefix-name`), each on its own copy of the disk."""
    started = []
    for short in names:
        name = f"{prefix}-{short}"
        disk = echo_disk(workdir / f"{name}.img")
        xml = workdir / f"{name}.xml"
        xml.write_text(domain_xml(name, disk))
        virsh("define", str(xml))
        virsh("start", name)
        started.append(name)
    return started


def remove_guests(prefix: str) -> None:
    for name in virsh("list", "--all", "--name", check=False).stdout.split():
        if name.startswith(prefix + "-"):
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)


def running_domains() -> list[str]:
    return virsh("list", "--name", check=False).stdout.split()


# ---------------------------------------------------------------------------
# The server


def server_command(port: int, workers: int) -> list[str]:
    """The server's command line: the product's own `manage.py serve` (uvicorn as production runs it), with the
    worker count in VAPOR_WEB_WORKERS (`server_environment`) and bench.serve_settings naming the bench's
    websocket application (the product's, behind the bench-only console hook)."""
    return [sys.executable, "manage.py", "serve", "--bind", f"{HOST}:{port}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def setup_django(workdir: Path, database_url: str | None) -> None:
    """As bench.common.django_setup, on `database_url` when one is given (else a SQLite file in `workdir`)."""
    if database_url is None:
        django_setup(workdir)
        return
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "vaporsite.settings",
            "DATABASE_URL": database_url,
            "VAPOR_DATA_DIR": str(workdir),
            "VAPOR_DEBUG": "0",
            "VAPOR_SECRET_KEY": "bench-" + secrets.token_hex(24),
            "VAPOR_SSL_REDIRECT": "0",
            "VAPOR_ALLOWED_HOSTS": "testserver",
        }
    )
    import django

    django.setup()


@dataclass
class PgDatabase:
    """A fresh PostgreSQL database for the run, made and dropped through psql on the server's `postgres` database."""

    server: str  # postgres://user@host:port, no database name
    name: str = field(default_factory=lambda: f"vapor_bench_con_{secrets.token_hex(4)}")

    @property
    def url(self) -> str:
        return f"{self.server.rstrip('/')}/{self.name}"

    def _sql(self, statement: str) -> None:
        done = subprocess.run(
            ["psql", f"{self.server.rstrip('/')}/postgres", "-v", "ON_ERROR_STOP=1", "-Atqc", statement],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        require(done.returncode == 0, f"psql failed on {statement!r}: {done.stderr.strip()}")

    def create(self) -> None:
        self._sql(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def server_environment(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment bench.common.django_setup gave this process, for the server's: same database and data dir."""
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.serve_settings",
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "VAPOR_DATA_DIR": str(workdir),
            "VAPOR_DEBUG": "0",
            "VAPOR_SSL_REDIRECT": "0",
            "VAPOR_ALLOWED_HOSTS": f"{HOST},localhost",
            "VAPOR_VIRT_TYPE": "qemu",
            "VAPOR_LOG_LEVEL": "WARNING",
            **(extra or {}),
        }
    )
    return env


def _proc_children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class Server:
    """uvicorn in a child process; with several workers, `workers()` are the processes that serve."""

    workdir: Path
    workers_wanted: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        log = (self.workdir / f"server-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            server_command(self.port, self.workers_wanted),
            env=server_environment(self.workdir, {"VAPOR_WEB_WORKERS": str(self.workers_wanted), **self.extra_env}),
            cwd=Path(__file__).resolve().parent.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            require(self.process.poll() is None, f"the server exited: see {log.name}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            if len(self.workers()) >= self.workers_wanted:
                break
            time.sleep(0.2)
        say(f"  server on port {self.port}, workers {self.workers()}")
        return self

    def workers(self) -> list[int]:
        """The serving processes: the server itself with one worker, else uvicorn's spawned children."""
        assert self.process is not None
        if self.workers_wanted == 1:
            return [self.process.pid]
        found = []
        for child in _proc_children(self.process.pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                found.append(child)
        return found

    def rss_mib(self) -> float:
        return sum(rss_mib(pid) for pid in self.workers())

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.workers())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# ---------------------------------------------------------------------------
# The run's user, VMs and tickets


@dataclass
class Portal:
    """What the parts need from the database: the API token and the VM rows by domain name."""

    token: str
    vm_ids: dict[str, int]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


def seed(domains: Sequence[str]) -> Portal:
    """A superuser with an API token and one VirtualMachine row per running domain (Django is set up)."""
    import uuid

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from vms.models import VirtualMachine

    user = get_user_model().objects.create_superuser("bench", "bench@example.invalid", secrets.token_urlsafe(16))
    token = Token.objects.create(user=user)
    ids = {}
    for name in domains:
        vm = VirtualMachine.objects.create(
            name=name, uuid=uuid.uuid4(), memory_mb=64, vcpus=1, virt_type="qemu", status="running", state="running"
        )
        ids[name] = vm.pk
    return Portal(token=token.key, vm_ids=ids)


async def ticket(session: aiohttp.ClientSession, server: Server, portal: Portal, domain: str, type: str) -> str:
    """The websocket path (with a fresh ticket) of `domain`'s console `type`."""
    url = f"{server.base}/api/v1/virtualmachines/{portal.vm_ids[domain]}/console"
    async with session.post(url, json={"type": type}, headers=portal.headers) as response:
        body: dict[str, Any] = await response.json()
        require(response.status == 201, f"the ticket API answered {response.status}: {json.dumps(body)[:300]}")
    return str(body["websocket"])


async def open_console(session: aiohttp.ClientSession, server: Server, path: str) -> aiohttp.ClientWebSocketResponse:
    """The console's websocket, opened as a page of the site would (same-origin Origin), with no size limit."""
    return await session.ws_connect(
        server.ws_base + path, origin=server.base, max_msg_size=0, autoping=True, compress=0, protocols=("binary",)
    )
