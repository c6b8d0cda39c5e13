"""A running Vapor portal and a headless Chromium for the browser tests.

The portal is the real thing, started the way scripts/run.sh starts it
(`manage.py serve`, the production ASGI server, beside the two `qcluster`
workers, DEBUG off, the static files collected and served by the server), as
subprocesses with a database, ISO directory and storage pool of their own.
`tls_portal` puts nginx with TLS in front of it (docs/nginx.conf.example, a
certificate the test makes). Chromium is Debian's
(/usr/bin/chromium) driven by Playwright; Playwright never downloads a browser
here. Nothing is skipped: a missing browser or library fails with a hint.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

from tests.integration.conftest import remove_pool, unique, virsh
from tests.integration.vm_support import shared_dir

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "var" / "artifacts" / "browser"
ADMIN_USER = "browser-admin"
ADMIN_PASSWORD = "browser-test-pw-7f3a"  # a throwaway account in a throwaway database
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Portal:
    url: str
    iso_dir: Path  # the only VAPOR_ISO_DIRS entry
    pool: str  # a scratch dir pool for the VM's volumes
    pool_dir: Path
    network: str
    username: str
    password: str
    logs: Path
    data_dir: Path
    env: dict[str, str]  # the portal's environment, for `manage.py` commands on its database


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _portal_env(data_dir: Path, iso_dir: Path) -> dict[str, str]:
    # The test command exports VAPOR_Q_SYNC=1 for the in-process tests; the
    # portal must queue its tasks for the worker, as in production.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAPOR_", "DJANGO_")) and k != "DATABASE_URL"}
    env.update(
        DATABASE_URL=f"sqlite:///{data_dir / 'db.sqlite3'}",
        VAPOR_DATA_DIR=str(data_dir),
        VAPOR_ISO_DIRS=str(iso_dir),
        VAPOR_ISO_ROOTS=str(iso_dir),
        VAPOR_ISO_DOWNLOAD_DIR=str(iso_dir),
        VAPOR_LIBVIRT_URI="qemu:///system",
        VAPOR_VIRT_TYPE="qemu",  # TCG: no dependence on /dev/kvm
        VAPOR_SECRET_KEY="browser-test-" + os.urandom(16).hex(),
        VAPOR_WEB_WORKERS="1",
        VAPOR_ALLOWED_HOSTS="127.0.0.1",
        VAPOR_Q_SYNC="0",
        VAPOR_Q_WORKERS="1",
        VAPOR_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


def _manage(env: dict[str, str], logs: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    (logs / f"manage-{args[0]}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        pytest.fail(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: no output)"
    return f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_until_serving(url: str, processes: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                pytest.fail(
                    f"{process.args!r} exited with {process.returncode} before the portal answered\n"
                    + _tail(logs / "serve.log")
                    + "\n"
                    + _tail(logs / "qcluster.log"),
                    pytrace=False,
                )
        try:
            with urllib.request.urlopen(f"{url}/admin/login/", timeout=5) as response:  # our own loopback server
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"the portal did not answer on {url} within {START_TIMEOUT:.0f} s\n" + _tail(logs / "serve.log"), pytrace=False)


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Portal]:
    """Vapor served on a free loopback port by `serve` + qcluster, with a superuser, a scratch pool and the `default` network."""
    probe = virsh("net-info", "default", check=False)
    if probe.returncode != 0:
        pytest.fail(
            f"libvirtd on qemu:///system has no `default` network ({probe.stderr.strip()}); "
            "start it and create it with: bash scripts/libvirtd.sh start && .venv/bin/python manage.py vapor_bootstrap",
            pytrace=False,
        )
    if "Active:         yes" not in probe.stdout:
        virsh("net-start", "default")

    top = shared_dir("vapor-browser-")  # 0755 under /var/tmp: QEMU (libvirt-qemu) reads the ISO and writes the pool
    iso_dir, pool_dir = top / "isos", top / "pool"
    for directory in (iso_dir, pool_dir):
        directory.mkdir(mode=0o755)
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    data_dir.mkdir()
    logs.mkdir()
    pool = unique("browser-pool")
    virsh("pool-define-as", pool, "dir", "--target", str(pool_dir))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        virsh("pool-start", pool)
        env = _portal_env(data_dir, iso_dir)
        _manage(env, logs, "migrate", "--noinput")
        _manage(env, logs, "collectstatic", "--noinput")
        _manage(
            {**env, "DJANGO_SUPERUSER_USERNAME": ADMIN_USER, "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD, "DJANGO_SUPERUSER_EMAIL": ""},
            logs,
            "createsuperuser",
            "--noinput",
        )
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        # As scripts/run.sh: the main cluster, the downloads' cluster, the server.
        for name, args, extra in (
            ("qcluster", ["qcluster"], {}),
            ("qcluster-downloads", ["qcluster"], {"Q_CLUSTER_NAME": settings.DOWNLOAD_QUEUE}),
            ("serve", ["serve", "--bind", f"127.0.0.1:{port}"], {}),
        ):
            with open(logs / f"{name}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", *args], cwd=ROOT, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        _wait_until_serving(url, processes, logs)
        yield Portal(
            url=url,
            iso_dir=iso_dir,
            pool=pool,
            pool_dir=pool_dir,
            network="default",
            username=ADMIN_USER,
            password=ADMIN_PASSWORD,
            logs=logs,
            data_dir=data_dir,
            env=env,
        )
    finally:
        for process in reversed(processes):
            _stop(process)
        # Shown with the test's report when it fails.
        print(_tail(logs / "serve.log", 60))
        print(_tail(logs / "qcluster.log", 60))
        remove_pool(pool)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: bash scripts/setup.sh (or .venv/bin/pip install -r requirements-dev.txt)", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (bash scripts/setup.sh installs it)", pytrace=False)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except Error as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) did not start under Playwright: {exc}", pytrace=False)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="en-US")
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def artifacts() -> Path:
    """var/artifacts/browser/ in the repository (ignored by git with the rest of var/), emptied of earlier screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@dataclass(frozen=True)
class TlsPortal:
    portal: Portal  # the portal behind, as served on its own port
    url: str  # https://127.0.0.1:PORT, nginx's side
    ca: Path  # the test CA's certificate
    logs: Path


@pytest.fixture
def tls_portal(portal: Portal, tmp_path: Path) -> Iterator[TlsPortal]:
    """nginx with TLS in front of `portal`, configured from docs/nginx.conf.example with a certificate the test makes."""
    from tests.support.serving import make_certificates, nginx_binary, start_nginx

    binary = nginx_binary()
    if binary is None:
        pytest.fail("nginx is missing: apt-get install nginx (bash scripts/setup.sh installs it)", pytrace=False)
    certificates_dir = tmp_path / "tls"
    certificates_dir.mkdir()
    certificates = make_certificates(certificates_dir)
    port = int(portal.url.rsplit(":", 1)[1])
    with start_nginx(binary, tmp_path / "nginx", upstream_port=port, certificates=certificates) as nginx:
        yield TlsPortal(portal=portal, url=nginx.url, ca=certificates.ca, logs=tmp_path / "nginx" / "logs")
