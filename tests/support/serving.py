"""Vapor's production server (`manage.py serve`) and nginx with TLS in front, run as subprocesses by tests.

- `prepare_data_dir` migrates a fresh database, collects the static files and makes a superuser,
  the way scripts/setup.sh and scripts/run.sh do.
- `start_serve` runs `manage.py serve` on a free loopback port and waits until it answers.
- `make_certificates` makes a test CA and a server certificate for 127.0.0.1 and localhost.
- `start_nginx` renders docs/nginx.conf.example (the documented config itself, with the test's ports,
  certificate and upstream put in) into an nginx prefix of its own and runs nginx in the foreground.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = ROOT / "docs" / "nginx.conf.example"
ADMIN_USER = "serve-admin"
ADMIN_PASSWORD = "serve-test-pw-41c9"  # a throwaway account in a throwaway database
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a portal of its own: nothing of the calling test's VAPOR_* settings leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAPOR_", "DJANGO_")) and k != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.support.serve_settings",  # the echo application on /ws/
        VAPOR_DATA_DIR=str(data_dir),
        VAPOR_SECRET_KEY="serve-test-" + "5e" * 24,
        VAPOR_VNC_KEY="serve-test-vnc-" + "a1" * 16,
        VAPOR_LIBVIRT_URI="test:///default",
        VAPOR_QEMU_USER="",
        VAPOR_ALLOWED_HOSTS="127.0.0.1,localhost",
        VAPOR_WEB_WORKERS="1",
        VAPOR_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(env: Mapping[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def prepare_data_dir(data_dir: Path) -> None:
    """Migrate, collect the static files and make the superuser ADMIN_USER, as the set-up would."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = serve_env(data_dir, VAPOR_TEST_ADMIN_PASSWORD=ADMIN_PASSWORD)
    for args in (
        ("migrate", "--noinput", "-v", "0"),
        ("collectstatic", "--noinput", "-v", "0"),
        (
            "shell",
            "-v",
            "0",
            "-c",
            "import os; from django.contrib.auth.models import User; "
            f"User.objects.create_superuser({ADMIN_USER!r}, '', os.environ['VAPOR_TEST_ADMIN_PASSWORD'])",
        ),
    ):
        result = manage(env, *args)
        if result.returncode != 0:
            raise AssertionError(f"manage.py {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@dataclass
class Process:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def _wait_for_port(port: int, process: Process, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.process.returncode} before it listened:\n{process.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    process.stop()
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s:\n{process.output()}")


@dataclass
class Served(Process):
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def start_serve(data_dir: Path, log: Path, **env: str) -> Iterator[Served]:
    """`manage.py serve --bind 127.0.0.1:PORT`, answering HTTP, stopped (SIGTERM) at the end."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=serve_env(data_dir, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, log, port)
    try:
        _wait_for_port(port, served, "manage.py serve")
        _wait_for_http(served)
        yield served
    finally:
        served.stop()


def _wait_for_http(served: Served) -> None:
    """The port can accept before the application has started (lifespan): wait for a real answer."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
        try:
            connection.request("GET", "/admin/login/")
            connection.getresponse().read()
            return  # any answer (a page, a redirect to HTTPS) is the application's
        except OSError:
            if served.process.poll() is not None:
                raise AssertionError(f"manage.py serve exited with {served.process.returncode}:\n{served.output()}") from None
            time.sleep(0.1)
        finally:
            connection.close()
    raise AssertionError(f"manage.py serve did not answer HTTP within {START_TIMEOUT:.0f} s:\n{served.output()}")


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the test CA's certificate: what a client trusts
    certificate: Path  # the server's certificate (127.0.0.1, localhost), signed by the CA
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A throwaway CA and a server certificate it signs, for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vapor test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = Certificates(ca=directory / "ca.pem", certificate=directory / "server.pem", key=directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


def render_nginx_site(*, upstream_port: int, http_port: int, https_port: int, certificates: Certificates) -> str:
    """docs/nginx.conf.example with the test's values in place of the ones an operator changes.

    Every value replaced must be there as the example spells it, so the example cannot drift from
    what this test runs without the test failing."""
    text = NGINX_EXAMPLE.read_text()
    replacements = [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};", 1),
        ("listen 80;", f"listen 127.0.0.1:{http_port};", 1),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;", 1),
        ("server_name vapor.example.org;", "server_name 127.0.0.1 localhost;", 2),
        ("/etc/ssl/vapor/fullchain.pem", str(certificates.certificate), 1),
        ("/etc/ssl/vapor/privkey.pem", str(certificates.key), 1),
    ]
    for old, new, count in replacements:
        found = text.count(old)
        if found != count:
            raise AssertionError(f"docs/nginx.conf.example has {old!r} {found} times, the test expects {count}")
        text = text.replace(old, new)
    return text


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@dataclass
class Nginx(Process):
    https_port: int
    http_port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


@contextmanager
def start_nginx(binary: str, prefix: Path, *, upstream_port: int, certificates: Certificates) -> Iterator[Nginx]:
    """nginx in the foreground with a prefix of its own (logs, pid, temporary files) and the example site."""
    https_port, http_port = free_port(), free_port()
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    site = prefix / "vapor.conf"
    site.write_text(render_nginx_site(upstream_port=upstream_port, http_port=http_port, https_port=https_port, certificates=certificates))
    # Started as root, nginx's workers would switch to `nobody`, who cannot enter pytest's 0700 directories.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {prefix / 'tmp' / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {prefix / "logs" / "access.log"};
{temp}
    include {site};
}}
"""
    )
    log = prefix / "logs" / "nginx.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(prefix / "nginx.conf")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    nginx = Nginx(process, prefix / "logs" / "error.log", https_port, http_port, prefix)
    try:
        _wait_for_port(https_port, nginx, "nginx")
        yield nginx
    finally:
        nginx.stop(signal.SIGQUIT)  # nginx's graceful stop
