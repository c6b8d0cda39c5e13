"""Turn libvirt failures into Vapor's own errors, and refuse unsafe names.

This module does not import `libvirt` (only the driver modules of `vms.hypervisor` do): it works
on the numeric error code and message, so the mapping is testable without
the bindings. The codes are libvirt's `virErrorNumber` values, which are part
of its stable ABI and never renumbered.
"""

from __future__ import annotations

import re

from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound, ServiceUnavailable, VaporError

VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_NO_CONNECT = 5
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_INVALID_ARG = 8
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_DOM_EXIST = 28
VIR_ERR_NETWORK_EXIST = 37
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_NETWORK = 43
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_STORAGE_VOL = 50
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_NO_INTERFACE = 57
VIR_ERR_CONFIG_UNSUPPORTED = 67
VIR_ERR_STORAGE_VOL_EXIST = 90

NOT_FOUND_CODES = frozenset({VIR_ERR_NO_DOMAIN, VIR_ERR_NO_NETWORK, VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL, VIR_ERR_NO_INTERFACE})
CONFLICT_CODES = frozenset({VIR_ERR_DOM_EXIST, VIR_ERR_NETWORK_EXIST, VIR_ERR_STORAGE_VOL_EXIST})
# libvirt 9 reports some name clashes with generic codes: defining a pool or
# network whose name is taken ("operation failed: pool 'x' already exists with
# uuid ..."), or a volume whose file is already on disk but unknown to the pool
# ("volume target path '...' already exists"), or a domain whose UUID another
# domain holds ("domain 'x' is already defined with uuid ..."). Only the words
# tell them apart.
GENERIC_CODES = frozenset({VIR_ERR_OPERATION_FAILED, VIR_ERR_OPERATION_INVALID})
_TAKEN = ("already exists", "already defined")
# The daemon went away under an open connection (stopped or restarting): the
# RPC layer reports "client socket is closed", "End of file while reading
# data", "Cannot write data: Broken pipe" with these codes. Such a call may be
# tried again once the daemon is back, so it is a 503, not a 500.
UNREACHABLE_CODES = frozenset({VIR_ERR_INTERNAL_ERROR, VIR_ERR_NO_CONNECT, VIR_ERR_SYSTEM_ERROR, VIR_ERR_RPC})
_UNREACHABLE = (
    "client socket is closed",
    "End of file while reading",
    "Broken pipe",
    "Connection reset",
    "Cannot recv data",
    "Cannot write data",
    "keepalive timeout",  # the host stopped answering: "connection closed due to keepalive timeout" (VIR_ERR_INTERNAL_ERROR)
)
UNAVAILABLE = "libvirt is unreachable: the daemon is stopped or restarting; try again shortly"

# Names become file names (volumes in their pool's directory, pool and network
# definitions under /etc/libvirt): a "/" or a leading "." would let a name
# escape its directory or hide a file (CVE-2015-5313).
_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME_LENGTH = 255
# Linux interface names: at most IFNAMSIZ - 1 = 15 bytes.
_BRIDGE = re.compile(r"[A-Za-z0-9_-]{1,15}")


def from_libvirt(code: int, message: str, *, field: str | None = None) -> VaporError:
    """The Vapor error for a libvirt error code, carrying libvirt's own words."""
    text = message.strip() or f"libvirt error {code}"
    if code in NOT_FOUND_CODES:
        return NotFound(text, field=field)
    if code in CONFLICT_CODES or (code in GENERIC_CODES and any(words in text for words in _TAKEN)):
        return Conflict(text, field=field)
    if code in UNREACHABLE_CODES and any(words in text for words in _UNREACHABLE):
        return ServiceUnavailable(f"{text} ({UNAVAILABLE})", libvirt_code=code)
    return HypervisorError(text, libvirt_code=code)


def validate_name(name: str, *, field: str, what: str) -> str:
    """Return `name` if it is safe as a libvirt object (and file) name, else InvalidInput."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} name must not be empty", field=field)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} name is longer than {MAX_NAME_LENGTH} characters", field=field)
    if name.startswith("."):
        raise InvalidInput(f"{what} name {name!r} must not start with '.'", field=field)
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{what} name {name!r} may only hold letters, digits, '.', '_' and '-'", field=field)
    return name


def validate_volume_name(name: str, *, field: str = "name") -> str:
    return validate_name(name, field=field, what="volume")


def validate_bridge_name(name: str, *, field: str = "bridge") -> str:
    if not isinstance(name, str) or not _BRIDGE.fullmatch(name):
        raise InvalidInput(f"bridge name {name!r} must be 1-15 letters, digits, '_' or '-'", field=field)
    return name
