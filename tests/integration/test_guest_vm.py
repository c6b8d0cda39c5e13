"""The in-guest helper itself: a Vapor-made VM boots the shell ISO and runs commands typed on its serial console."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.guest_vm import vapor_guest
from tests.integration.vm_support import VmEnv

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db, pytest.mark.slow]


def test_a_vapor_vm_boots_the_shell_iso_and_runs_commands_with_their_exit_status(vm_api, run_tasks, vm_env: VmEnv, shell_iso: Path):
    guest = vapor_guest(vm_api, run_tasks, vm_env, shell_iso, name="guest-helper")
    try:
        assert guest.check("echo $((6*7))").strip() == "42"
        failed = guest.run("ls /nonexistent")
        assert failed.status != 0 and "nonexistent" in failed.output
        assert "vda" in guest.check("ls /sys/block"), "the VM's 1 GB disk is in the guest"
    finally:
        guest.close()
