"""Shared pieces of the hostile-input suites: the place a request may touch, and what it left there.

`Ground` is every directory a hostile request could write into (disk roots,
pools, ISO roots and the download directory) plus the fake hypervisor. Take a
`snapshot()` before the request and call `leftovers()` after it: the count
of new or changed files, domains, volumes created and VM, disk and ISO rows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.management import call_command

from isos.models import IsoImage
from tests.fakes import FakeHypervisor
from tests.support.images import sha256
from vms.models import Disk, VirtualMachine

ISO_URL = "/api/v1/virtualmachines/isos"
HV_WRITES = ("create_volume", "clone_volume", "define_domain", "start_domain", "set_autostart")


def file_state(directories: list[Path]) -> dict[str, str]:
    """path -> sha256 of every file (not following symlinks out) under `directories`."""
    state: dict[str, str] = {}
    for directory in directories:
        if not directory.exists():
            continue
        for path in sorted(directory.rglob("*")):
            if path.is_symlink():
                state[str(path)] = "symlink:" + str(path.readlink())
            elif path.is_file():
                state[str(path)] = sha256(path)
            else:
                state[str(path)] = "dir"
    return state


@dataclass
class Snapshot:
    files: dict[str, str]
    rows: dict[str, int]
    domains: set[str]
    calls: dict[str, int]


@dataclass
class Ground:
    hv: FakeHypervisor
    directories: list[Path] = field(default_factory=list)

    def rows(self) -> dict[str, int]:
        return {"vm": VirtualMachine.objects.count(), "disk": Disk.objects.count(), "iso": IsoImage.objects.count()}

    def snapshot(self) -> Snapshot:
        return Snapshot(file_state(self.directories), self.rows(), set(self.hv.domains), {k: self.hv.calls[k] for k in HV_WRITES})

    def leftovers(self, before: Snapshot) -> tuple[int, str]:
        """How many things differ from `before`, and which."""
        after = self.snapshot()
        changed = [p for p, digest in after.files.items() if before.files.get(p) != digest]
        gone = [p for p in before.files if p not in after.files]
        rows = {k: after.rows[k] - before.rows[k] for k in after.rows if after.rows[k] != before.rows[k]}
        domains = sorted(after.domains - before.domains)
        calls = {k: after.calls[k] - before.calls[k] for k in HV_WRITES if after.calls[k] != before.calls[k]}
        count = len(changed) + len(gone) + sum(abs(v) for v in rows.values()) + len(domains) + sum(calls.values())
        parts = [f"files {changed + gone}" if changed or gone else "", f"rows {rows}" if rows else ""]
        parts += [f"domains {domains}" if domains else "", f"hypervisor calls {calls}" if calls else ""]
        return count, "; ".join(p for p in parts if p)


def vm_payload(name: str = "hostile", **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory": 512, "vcpus": 1, **extra}


def error_field(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("field", "")) if isinstance(body, dict) else ""


def database_dump() -> str:
    """Every row of every table, as JSON text (to look for bytes that must not be there)."""
    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    return out.getvalue()
