"""The shell variant of the probe ISO under the real libvirtd: a guest that stays up with a shell on its serial port.

Booted (BIOS, and UEFI with Secure Boot) by the `shell_guest` fixture, it must
print the probe's report and SHELL_READY on its serial log, answer a command
typed through libvirt's console stream (`virDomainOpenConsole`, what the
browser's serial console bridges), give that shell job control (Ctrl-C works), restart it
when it exits, show something on its screen, and power off on an ACPI
shutdown. The file checks run without a daemon.
"""

from __future__ import annotations

import re
import time

import libvirt
import pytest

from tests.bootiso import MARKER, SHELL_READY, initramfs, parse_probe_output
from tests.bootiso.iso import PROBE, SHELL, grub_cfg, isolinux_cfg
from tests.support.guests import URI, GuestError, SerialConsole, ShellGuest, lit_fraction, png_pixels, screenshot_png

PROMPT = r"vapor-shell# "
ANSWER = rb"\r\n42\r\n"  # the echoed command line holds "$((6*7))", never "42" alone on a line


def test_the_shell_variant_differs_from_the_probe_only_in_its_kernel_command_line_and_names():
    assert SHELL.cmdline == f"console=tty0 {PROBE.cmdline} vapor.shell"
    assert SHELL.cmdline.split().index("console=ttyS0,115200") > SHELL.cmdline.split().index("console=tty0"), (
        "/dev/console is the last console= given: it must stay the serial port"
    )
    assert "vapor.shell" not in PROBE.cmdline
    assert isolinux_cfg(SHELL) == isolinux_cfg(PROBE).replace(PROBE.cmdline, SHELL.cmdline)
    assert grub_cfg(SHELL) == grub_cfg(PROBE).replace(PROBE.cmdline, SHELL.cmdline).replace(PROBE.title, SHELL.title)
    assert len({PROBE.iso_name, SHELL.iso_name}) == len({PROBE.volume_id, SHELL.volume_id}) == 2


def test_init_powers_off_unless_booted_with_vapor_shell_and_then_loops_a_shell_on_ttys0():
    script = initramfs.init_script()
    report_end = script.index(f'echo "{MARKER}"')
    switch = script.index(' in\n    *" vapor.shell "*) ;;', report_end)
    assert "poweroff -f\n        exit 1" in script[switch:], "without vapor.shell the probe powers off, as before"
    shell_part = script[switch:]
    assert f'echo "{SHELL_READY}"' in shell_part
    assert re.search(r"while :; do\n    echo \"VAPOR-SHELL-READY\"\n    TERM=\S+ setsid -c sh </dev/ttyS0 >/dev/ttyS0 2>&1\n", shell_part)
    assert f'echo "{SHELL_READY}"' not in script[:switch], "the ready line comes after the probe's report"


# --- booting it -------------------------------------------------------------


def _ask_42(console: SerialConsole) -> None:
    # A fresh prompt first. On a loaded machine the TCG guest's shell may still be starting when the first
    # Enter arrives (a CI run once saw "vapor-shell" and no "# " for 30 s): ask again, three times at most.
    for attempt in range(3):
        console.send("\r")
        try:
            console.expect(PROMPT, timeout=15)
            break
        except GuestError:
            if attempt == 2:
                raise
    console.send("echo $((6*7))\r")
    console.expect(ANSWER, timeout=30)
    console.expect(PROMPT)


@pytest.mark.libvirt
@pytest.mark.slow
@pytest.mark.parametrize("shell_guest", [{"firmware": "bios"}, {"firmware": "uefi-secure"}], ids=["bios", "uefi-secure"], indirect=True)
def test_guest_reports_then_answers_a_command_typed_through_the_console_stream(shell_guest: ShellGuest):
    report = parse_probe_output(shell_guest.log_text())
    assert report.complete and [d.name for d in report.disks] == ["sr0"]
    assert (report.firmware, report.secure_boot) == {"bios": ("bios", False), "uefi-secure": ("efi", True)}[shell_guest.firmware]
    log = shell_guest.log_text()
    assert log.index(MARKER) < log.index(SHELL_READY)

    with SerialConsole(shell_guest.name) as console:
        started = time.monotonic()
        _ask_42(console)
        echoed = time.monotonic() - started
    print(f"{shell_guest.name} ({shell_guest.firmware}): start -> {SHELL_READY} {shell_guest.boot_seconds:.1f} s, echo {echoed:.2f} s")


@pytest.mark.libvirt
@pytest.mark.slow
def test_console_shell_takes_ctrl_c_and_comes_back_after_exit(shell_guest: ShellGuest):
    with SerialConsole(shell_guest.name) as console:
        _ask_42(console)
        console.send("tty\r")
        console.expect(r"\r\n/dev/ttyS0\r\n")
        # Ctrl-C stops a foreground command: ttyS0 is the shell's controlling terminal (job control).
        console.send("sleep 600\r")
        console.expect(r"sleep 600\r\n")
        time.sleep(0.5)
        console.send(b"\x03")
        console.expect(PROMPT, timeout=10)
        console.send("exit\r")
        console.expect(SHELL_READY)
        _ask_42(console)
    assert shell_guest.log_text().count(SHELL_READY) == 2


@pytest.mark.libvirt
@pytest.mark.slow
def test_screen_shows_the_shell_and_acpi_shutdown_powers_the_guest_off(shell_guest: ShellGuest):
    width, height, pixels = png_pixels(screenshot_png(shell_guest.name))
    assert (width, height) >= (640, 400)
    assert 0.001 < lit_fraction(pixels) < 0.5, "the screen should show text on black"

    conn = libvirt.open(URI)
    try:
        domain = conn.lookupByName(shell_guest.name)
        domain.shutdown()  # ACPI power button, as Vapor's "stop" does
        deadline = time.monotonic() + 60
        while domain.isActive() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not domain.isActive(), "the guest ignored the ACPI power button"
    finally:
        conn.close()
