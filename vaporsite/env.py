"""Read Vapor's configuration from the environment.

`load()` never raises: a bad value falls back to its default and is recorded
in `Config.problems`, which the system checks (`vaporsite/checks.py`) turn
into errors naming the variable. That keeps `manage.py check` usable as the
place where a misconfiguration is explained.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import dj_database_url
from django.core.management.utils import get_random_secret_key

T = TypeVar("T")

# Kept in the data directory when the environment gives no key (README,
# "Configuration"): made once, mode 0600, read by every later start, so the
# web server and the worker agree and sessions survive a restart.
SECRET_KEY_FILE = "secret_key"  # noqa: S105 (a file name)
VNC_KEY_FILE = "vnc_key"

DEFAULT_ISO_DIRS = "/var/lib/libvirt/images/iso:/var/lib/vapor/iso:/usr/share/iso"
DEFAULT_DOWNLOAD_DIR = "/var/lib/vapor/iso"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
# The default VAPOR_ALLOWED_HOSTS: the portal is reached on this machine only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# A disk's size in GB is stored in a 32-bit column (PositiveIntegerField).
MAX_DISK_GB_CEILING = 2**31 - 1
# Where `manage.py serve` (and so scripts/run.sh) listens unless told otherwise.
DEFAULT_LISTEN = "127.0.0.1:8000"
# django-q2's broker: "orm" keeps the queue in Vapor's database (one machine, the default);
# "redis" lets several machines' clusters share one queue (README, "Running several portal machines").
Q_BROKERS = ("orm", "redis")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Problem:
    variable: str
    message: str


@dataclass(frozen=True)
class Config:
    data_dir: Path
    database: dict[str, Any]
    secret_key: str
    # Encrypts VNC passwords at rest (vms/encryption.py); never derived from secret_key.
    vnc_key: str
    debug: bool
    allowed_hosts: list[str]
    libvirt_uri: str
    host_connect_timeout: float  # seconds a connection to a libvirt host may take to open
    host_retry_after: float  # seconds a host that failed is not asked again (requests fail at once meanwhile)
    host_keepalive: int  # seconds between keepalive probes on a kept connection (3 missed: it is dead)
    iso_dirs: tuple[Path, ...]
    iso_roots: tuple[Path, ...]
    download_dir: Path
    download_allow_private: bool
    download_allowed_networks: tuple[str, ...]
    download_max_bytes: int
    download_connect_timeout: float
    download_read_timeout: float
    download_attempts: int
    download_deadline: float
    download_min_rate: int
    download_rate_window: float
    download_workers: int
    osinfo_dir: Path
    disk_roots: tuple[Path, ...]
    virt_type: str
    qemu_user: str  # the account QEMU runs as: files given to it must be reachable by it ("" skips the check)
    graphics_listen: str
    serial_log_dir: Path | None
    q_workers: int
    q_timeout: int
    q_retry: int
    q_sync: bool
    q_broker: str  # one of Q_BROKERS
    redis_url: str  # read only with q_broker "redis"
    log_level: str
    secure_cookies: bool
    ssl_redirect: bool
    hsts_seconds: int
    # Bounds on what one VM request may ask for (README, "Limits").
    max_disk_gb: int
    max_disks: int
    max_nics: int
    max_body_bytes: int
    memory_overcommit: float
    cpu_overcommit: float
    pool_overcommit: float
    # The production server (`manage.py serve`, README "Production server").
    web_listen: tuple[str, int]  # host (no brackets) and port
    web_workers: int
    web_keepalive: int
    web_graceful_timeout: int
    forwarded_allow_ips: tuple[str, ...]  # proxies whose X-Forwarded-Proto/-For are believed
    # Browser consoles (vms/consoles): how long an unused ticket lives, how often open consoles are re-checked.
    console_ticket_ttl: int = 30
    console_check_interval: float = 2.0
    problems: tuple[Problem, ...] = field(default=())

    @property
    def allowed_iso_roots(self) -> tuple[Path, ...]:
        """Every directory an ISO may live in: search dirs, download dir, extra roots."""
        roots: list[Path] = []
        for root in (*self.iso_dirs, self.download_dir, *self.iso_roots):
            if root not in roots:
                roots.append(root)
        return tuple(roots)


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[Problem] = []

    def raw(self, name: str, default: str) -> str:
        return self.environ.get(name, default)

    def parse(self, name: str, default: T, convert: Callable[[str], T], what: str) -> T:
        value = self.environ.get(name)
        if value is None:
            return default
        try:
            return convert(value.strip())
        except (TypeError, ValueError) as exc:
            detail = f": {exc}" if str(exc) else ""
            self.problems.append(Problem(name, f"{value!r} is not {what}{detail}"))
            return default

    def flag(self, name: str, default: bool) -> bool:
        return self.parse(name, default, _to_bool, "a boolean (1/0, true/false, yes/no, on/off)")

    def number(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        def convert(text: str) -> int:
            number = int(text)
            if number < minimum:
                raise ValueError(f"must be at least {minimum}")
            if maximum is not None and number > maximum:
                raise ValueError(f"must be at most {maximum}")
            return number

        return self.parse(name, default, convert, "a whole number")

    def seconds(self, name: str, default: float) -> float:
        def convert(text: str) -> float:
            number = float(text)
            if not 0 < number < float("inf"):  # also refuses nan
                raise ValueError("must be greater than 0 (and finite)")
            return number

        return self.parse(name, default, convert, "a number of seconds")

    def ratio(self, name: str, default: float) -> float:
        def convert(text: str) -> float:
            number = float(text)
            if not 0 < number <= 1000:  # also refuses nan and inf
                raise ValueError("must be greater than 0 and at most 1000")
            return number

        return self.parse(name, default, convert, "a ratio (a number such as 1.5)")

    def dirs(self, name: str, default: str) -> tuple[Path, ...]:
        def convert(text: str) -> tuple[Path, ...]:
            parts = [p for p in text.split(":") if p]
            for part in parts:
                if not os.path.isabs(part):
                    raise ValueError(f"{part!r} is not an absolute path")
            return tuple(Path(os.path.normpath(p)) for p in parts)

        return self.parse(name, convert(default) if default else (), convert, "a ':'-separated list of absolute directories")

    def directory(self, name: str, default: str) -> Path:
        def convert(text: str) -> Path:
            if not os.path.isabs(text):
                raise ValueError("must be an absolute path")
            return Path(os.path.normpath(text))

        return self.parse(name, Path(default), convert, "an absolute directory")


def _to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError("")


def _optional_dir(text: str) -> Path | None:
    if not text:
        return None
    if not os.path.isabs(text):
        raise ValueError("must be an absolute path")
    return Path(os.path.normpath(text))


def _virt_type(text: str) -> str:
    if text not in {"auto", "kvm", "qemu"}:
        raise ValueError("")
    return text


def _address(text: str) -> str:
    import ipaddress

    return str(ipaddress.ip_address(text))


def _networks(text: str) -> tuple[str, ...]:
    import ipaddress

    nets = tuple(n.strip() for n in text.split(",") if n.strip())
    for net in nets:
        ipaddress.ip_network(net, strict=False)
    return nets


def _broker(text: str) -> str:
    if text.lower() not in Q_BROKERS:
        raise ValueError("")
    return text.lower()


def _redis_url(text: str) -> str:
    """redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss:// (TLS) or unix:///PATH[?db=N]; raises ValueError."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(text)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("the scheme must be redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError("unix:// needs an absolute socket path")
        db = parse_qs(parts.query).get("db", ["0"])[0]
    else:
        if not parts.hostname:
            raise ValueError("no host")
        parts.port  # noqa: B018 (raises ValueError on a port out of range)
        db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the database {db!r} is not a number")
    return text


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 address in brackets, [::1]:8000) as (host, port); raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        import ipaddress

        if ipaddress.ip_address(host).version != 6:
            raise ValueError("only an IPv6 address goes in brackets")
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:8000")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port_text)


def _trusted_proxies(text: str) -> tuple[str, ...]:
    import ipaddress

    proxies = tuple(p.strip() for p in text.split(",") if p.strip())
    if not proxies:
        raise ValueError("name at least one address")
    for proxy in proxies:
        ipaddress.ip_network(proxy, strict=False)
    return proxies


def kept_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret stored in `path`, made by `make` and stored first if the file does not exist.

    The file is written whole under a temporary name (mode 0600 from the
    start) and then linked to `path`, which fails if `path` exists: two
    processes starting at once cannot each keep their own key, and nobody
    ever reads a half-written one. Raises OSError (unreadable, or a directory
    that cannot be written) or ValueError (an empty file).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(make() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            # If another process kept its key first, this one uses that key.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        text = path.read_text()
    secret = text.strip()
    if not secret:
        raise ValueError("the file is empty")
    return secret


def _secret(env: _Reader, variable: str, path: Path, make: Callable[[], str]) -> str:
    given = env.raw(variable, "").strip()
    if given:
        return given
    try:
        return kept_secret(path, make)
    except (OSError, ValueError) as exc:
        # This process still starts (checks then fail, naming the file), with
        # a key nobody else has: nothing made with it outlives the process.
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        env.problems.append(Problem(variable, f"is not set and {path} cannot be used: {detail}"))
        return make()


def load(environ: Mapping[str, str] | None = None) -> Config:
    env = _Reader(os.environ if environ is None else environ)
    base_dir = Path(__file__).resolve().parent.parent
    data_dir = Path(env.raw("VAPOR_DATA_DIR", str(base_dir / "var"))).absolute()
    sqlite_default = f"sqlite:///{data_dir / 'vapor.sqlite3'}"

    def database(text: str) -> dict[str, Any]:
        config: dict[str, Any] = dict(dj_database_url.parse(text, conn_max_age=0))
        if not config.get("ENGINE"):
            raise ValueError("unknown scheme")
        if "sqlite" in config["ENGINE"]:
            # The web process and the worker write concurrently. WAL lets
            # readers go on while one writes; "timeout" waits for the write
            # lock instead of failing at once with "database is locked"; and
            # IMMEDIATE takes that lock when a transaction begins, so two
            # transactions that read first and write later cannot each hold a
            # read lock the other must wait on (SQLite would then fail one at
            # once, whatever the timeout). NORMAL is durable enough under WAL.
            config.setdefault("OPTIONS", {}).update(
                timeout=30,
                transaction_mode="IMMEDIATE",
                init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            )
        return config

    debug = env.flag("VAPOR_DEBUG", False)
    secret_key = _secret(env, "VAPOR_SECRET_KEY", data_dir / SECRET_KEY_FILE, get_random_secret_key)
    vnc_key = _secret(env, "VAPOR_VNC_KEY", data_dir / VNC_KEY_FILE, lambda: secrets.token_urlsafe(32))
    hosts = [h.strip() for h in env.raw("VAPOR_ALLOWED_HOSTS", ",".join(LOOPBACK_HOSTS)).split(",") if h.strip()]
    # Served under a host name of its own, the portal is expected behind HTTPS;
    # on this machine's loopback only (the run command), plain HTTP must work.
    public = any(host not in LOOPBACK_HOSTS for host in hosts)
    if not hosts:
        env.problems.append(Problem("VAPOR_ALLOWED_HOSTS", "is empty: no host name would be served"))

    config = Config(
        data_dir=data_dir,
        database=env.parse(
            "DATABASE_URL", database(sqlite_default), database, "a database URL (sqlite:///PATH or postgres://USER@HOST:PORT/NAME)"
        ),
        secret_key=secret_key,
        vnc_key=vnc_key,
        debug=debug,
        allowed_hosts=hosts,
        libvirt_uri=env.raw("VAPOR_LIBVIRT_URI", "qemu:///system"),
        host_connect_timeout=env.seconds("VAPOR_HOST_CONNECT_TIMEOUT", 5.0),
        host_retry_after=env.seconds("VAPOR_HOST_RETRY_AFTER", 10.0),
        host_keepalive=env.number("VAPOR_HOST_KEEPALIVE", 5, 1),
        iso_dirs=env.dirs("VAPOR_ISO_DIRS", DEFAULT_ISO_DIRS),
        iso_roots=env.dirs("VAPOR_ISO_ROOTS", ""),
        download_dir=env.directory("VAPOR_ISO_DOWNLOAD_DIR", DEFAULT_DOWNLOAD_DIR),
        download_allow_private=env.flag("VAPOR_DOWNLOAD_ALLOW_PRIVATE", False),
        download_allowed_networks=env.parse("VAPOR_DOWNLOAD_ALLOWED_NETWORKS", (), _networks, "a comma-separated list of networks (CIDR)"),
        download_max_bytes=env.number("VAPOR_DOWNLOAD_MAX_BYTES", 16 * 1024**3, 1),
        download_connect_timeout=env.seconds("VAPOR_DOWNLOAD_CONNECT_TIMEOUT", 10.0),
        download_read_timeout=env.seconds("VAPOR_DOWNLOAD_READ_TIMEOUT", 60.0),
        download_attempts=env.number("VAPOR_DOWNLOAD_ATTEMPTS", 3, 1),
        download_deadline=0.0,  # set below: it depends on q_timeout
        download_min_rate=env.number("VAPOR_DOWNLOAD_MIN_RATE", 16 * 1024, 0),
        download_rate_window=env.seconds("VAPOR_DOWNLOAD_RATE_WINDOW", 120.0),
        download_workers=env.number("VAPOR_DOWNLOAD_WORKERS", 2, 1),
        osinfo_dir=env.directory("VAPOR_OSINFO_DIR", "/usr/share/osinfo"),
        disk_roots=env.dirs("VAPOR_DISK_ROOTS", ""),
        virt_type=env.parse("VAPOR_VIRT_TYPE", "auto", _virt_type, "one of auto, kvm, qemu"),
        qemu_user=env.raw("VAPOR_QEMU_USER", "libvirt-qemu").strip(),
        serial_log_dir=env.parse("VAPOR_SERIAL_LOG_DIR", None, _optional_dir, "an absolute directory"),
        graphics_listen=env.parse("VAPOR_GRAPHICS_LISTEN", "127.0.0.1", _address, "an IP address"),
        q_workers=env.number("VAPOR_Q_WORKERS", 2, 1),
        q_timeout=env.number("VAPOR_TASK_TIMEOUT", 6 * 3600, 10),
        q_retry=0,  # set below: it depends on q_timeout
        q_sync=env.flag("VAPOR_Q_SYNC", False),
        q_broker=env.parse("VAPOR_Q_BROKER", "orm", _broker, f"one of {', '.join(Q_BROKERS)}"),
        redis_url=DEFAULT_REDIS_URL,  # set below: its problem must not quote a password
        log_level=env.raw("VAPOR_LOG_LEVEL", "INFO").upper(),
        secure_cookies=env.flag("VAPOR_SECURE_COOKIES", public),
        ssl_redirect=env.flag("VAPOR_SSL_REDIRECT", public),
        hsts_seconds=env.number("VAPOR_HSTS_SECONDS", 31536000, 0),
        max_disk_gb=env.number("VAPOR_MAX_DISK_GB", 65536, 1, MAX_DISK_GB_CEILING),
        max_disks=env.number("VAPOR_MAX_DISKS", 64, 1, 256),
        max_nics=env.number("VAPOR_MAX_NICS", 16, 1, 256),
        max_body_bytes=env.number("VAPOR_MAX_BODY_BYTES", 1024**2, 1024),
        memory_overcommit=env.ratio("VAPOR_MEMORY_OVERCOMMIT", 4.0),
        cpu_overcommit=env.ratio("VAPOR_CPU_OVERCOMMIT", 4.0),
        pool_overcommit=env.ratio("VAPOR_POOL_OVERCOMMIT", 4.0),
        web_listen=env.parse("VAPOR_LISTEN", listen_address(DEFAULT_LISTEN), listen_address, "an address HOST:PORT"),
        web_workers=env.number("VAPOR_WEB_WORKERS", 2, 1, 64),
        web_keepalive=env.number("VAPOR_WEB_KEEPALIVE", 5, 1, 3600),
        web_graceful_timeout=env.number("VAPOR_WEB_GRACEFUL_TIMEOUT", 10, 1, 3600),
        forwarded_allow_ips=env.parse(
            "VAPOR_FORWARDED_ALLOW_IPS", ("127.0.0.1",), _trusted_proxies, "a comma-separated list of addresses or networks (CIDR)"
        ),
        console_ticket_ttl=env.number("VAPOR_CONSOLE_TICKET_TTL", 30, 1, 60),
        console_check_interval=env.seconds("VAPOR_CONSOLE_CHECK_INTERVAL", 2.0),
        problems=(),
    )
    # django-q2 hands a task to another worker once it has been out this long
    # without an answer (a worker killed mid-task); it must outlast a task
    # that is still running, or that task would run twice side by side.
    q_retry = env.number("VAPOR_TASK_RETRY", config.q_timeout + 120, 11)
    if q_retry <= config.q_timeout:
        env.problems.append(Problem("VAPOR_TASK_RETRY", f"must be greater than VAPOR_TASK_TIMEOUT ({config.q_timeout})"))
        q_retry = config.q_timeout + 120
    config = replace(config, q_retry=q_retry)
    # A download must give up before django-q2 kills its worker (which would leave the row for the
    # janitor): by default it has two thirds of the task timeout, 4 hours of the default 6.
    default_deadline = config.q_timeout * 2 / 3
    deadline = env.seconds("VAPOR_DOWNLOAD_DEADLINE", default_deadline)
    if not deadline < config.q_timeout:
        env.problems.append(Problem("VAPOR_DOWNLOAD_DEADLINE", f"must be less than VAPOR_TASK_TIMEOUT ({config.q_timeout})"))
        deadline = default_deadline
    config = replace(config, download_deadline=deadline)
    redis_text = env.raw("VAPOR_REDIS_URL", DEFAULT_REDIS_URL).strip()
    try:
        config = replace(config, redis_url=_redis_url(redis_text))
    except ValueError as exc:
        env.problems.append(Problem("VAPOR_REDIS_URL", f"is not a Redis URL (redis://HOST:PORT/DB): {exc}"))
    if config.log_level not in LOG_LEVELS:
        env.problems.append(Problem("VAPOR_LOG_LEVEL", f"{config.log_level!r} is not one of {', '.join(LOG_LEVELS)}"))
        config = replace(config, log_level="INFO")
    return replace(config, problems=tuple(env.problems))
