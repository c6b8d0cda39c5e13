"""A VM made by Vapor (create-enhanced, the real libvirtd) that boots the shell ISO: commands run in the guest.

`vapor_guest(vm_api, run_tasks, vm_env, shell_iso, name=..., **payload)`
creates the VM through the API (TCG, 512 MiB, no graphics, the shell ISO as
its CD-ROM and first boot device, the VM's own serial log), waits for the
shell's ready line and returns a `VaporGuest`. `guest.run("cmd")` types the
command on the serial console and returns what it printed (stdout and
stderr, CR-LF turned into LF), with its exit status. The VM is Vapor's, so
what the tests change goes through Vapor's own services and domain XML.
The `vm_env` fixture removes the domain and its volumes afterwards.
"""

from __future__ import annotations

import itertools
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bootiso import SHELL_READY
from tests.integration.vm_support import VmEnv, wait_for
from tests.support.api import RunTasks, post_create
from tests.support.guests import SerialConsole
from vms.models import VirtualMachine

PROMPT = r"vapor-shell# "
BOOT_TIMEOUT = 300.0  # TCG boots on 2 busy cores can take minutes
_counter = itertools.count(1)


@dataclass
class GuestRun:
    status: int
    output: str


@dataclass
class VaporGuest:
    vm: VirtualMachine
    serial_log: Path
    _console: SerialConsole | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.vm.name

    def console(self) -> SerialConsole:
        if self._console is None:
            self._console = SerialConsole(self.vm.name)
            self._console.send("\r")
            self._console.expect(PROMPT, timeout=60)
        return self._console

    def run(self, command: str, timeout: float = 60.0) -> GuestRun:
        """Run `command` in the guest's shell; its output and exit status.

        The markers are typed split by an empty quote pair, so the console's
        echo of the command line never matches them: only the shell's output does.
        """
        n = next(_counter)
        console = self.console()
        console.send(f"echo VAPOR''-BEGIN-{n}; {command}; echo VAPOR''-END-{n}-$?\r")
        match = console.expect(rf"(?s)VAPOR-BEGIN-{n}\r?\n(.*?)VAPOR-END-{n}-(\d+)".encode(), timeout=timeout)
        output = match.group(1).decode(errors="replace").replace("\r\n", "\n")
        return GuestRun(status=int(match.group(2)), output=output)

    def check(self, command: str, timeout: float = 60.0) -> str:
        """`run`, asserting the command succeeded; its output."""
        result = self.run(command, timeout)
        assert result.status == 0, f"`{command}` exited {result.status} in {self.name}:\n{result.output}"
        return result.output

    def log_text(self) -> str:
        return self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None


def copy_shell_iso(vm_env: VmEnv, shell_iso: Path, filename: str = "vapor-shell.iso") -> Path:
    """The shell ISO in the environment's ISO directory (QEMU may read it there; libvirt chowns what it boots)."""
    target = vm_env.isos / filename
    if not target.exists():
        shutil.copyfile(shell_iso, target)
        target.chmod(0o644)
    return target


def vapor_guest(vm_api: Any, run_tasks: RunTasks, vm_env: VmEnv, shell_iso: Path, *, name: str, **payload: Any) -> VaporGuest:
    """Create `name` through create-enhanced from the shell ISO and wait until its shell is ready on ttyS0."""
    iso = copy_shell_iso(vm_env, shell_iso)
    body: dict[str, Any] = {
        "name": name,
        "memory": 512,
        "vcpus": 1,
        "graphics": {"type": "none"},
        "storage_pool": vm_env.pool,
        "iso_path": str(iso),
        "disks": [{"size": 1}],
        **payload,
    }
    response = post_create(vm_api, run_tasks, body)
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(pk=response.json()["id"])
    assert vm.status == "running", vm.error
    log = vm_env.serial / f"{vm.name}.serial.log"
    wait_for(lambda: log.exists() and SHELL_READY in log.read_text(errors="replace"), BOOT_TIMEOUT, f"{SHELL_READY} on {log}")
    return VaporGuest(vm=vm, serial_log=log)


def first_line(text: str, pattern: str) -> re.Match[str]:
    """The first match of `pattern` in `text` (multi-line), or an assertion error quoting the text."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no {pattern!r} in:\n{text}"
    return match
