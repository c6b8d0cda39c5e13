"""The browser consoles for real: Chromium against the portal under `manage.py serve`, a TCG guest booted
from the shell probe ISO, its screen through noVNC and its serial port through xterm.js; then the same two
consoles through nginx with TLS (`https://`, `wss://`) in front.

Screenshots go to var/artifacts/browser/consoles/. The VNC password is set on the VM and typed into the
page's prompt; afterwards it must be in no page, API answer, log or ticket row.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.bootiso import build_shell_iso
from tests.browser.cockpit_support import portal_api
from tests.browser.conftest import ARTIFACTS, Portal, TlsPortal
from tests.integration.conftest import unique, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

PASSWORD = "Vnc4Tst8"  # VNC passwords are at most 8 characters
BOOT_TIMEOUT = 240.0
SHOTS = ARTIFACTS / "consoles"
PROMPT = "vapor-shell# "


@dataclass
class Guest:
    pk: int
    name: str
    token: str


@pytest.fixture
def guest(portal: Portal) -> Iterator[Guest]:
    """A VM created through the API from the shell ISO, with a VNC password, running; deleted at the end."""
    made = subprocess.run(
        [sys.executable, "manage.py", "drf_create_token", portal.username],
        cwd=Path(__file__).resolve().parents[2],
        env=portal.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    token = made.stdout.split()[2]
    iso = portal.iso_dir / "shell.iso"
    shutil.copyfile(build_shell_iso(), iso)
    iso.chmod(0o644)
    name = unique("console-vm")
    status, body = portal_api(
        portal,
        token,
        "POST",
        "/api/v1/virtualmachines/create-enhanced",
        {
            "name": name,
            "memory": 384,
            "vcpus": 1,
            "iso_path": str(iso),
            "storage_pool": portal.pool,
            "disks": [{"size": 1}],
            "graphics": {"type": "vnc", "password": PASSWORD},
        },
    )
    assert status == 202, body
    pk = int(body["id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, vm = portal_api(portal, token, "GET", f"/api/v1/virtualmachines/{pk}")
        if vm["status"] in ("running", "failed"):
            break
        time.sleep(0.5)
    assert vm["status"] == "running", vm
    try:
        yield Guest(pk=pk, name=name, token=token)
    finally:
        portal_api(portal, token, "DELETE", f"/api/v1/virtualmachines/{pk}")
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)


def _shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _log_in(page: Page, url: str, portal: Portal) -> None:
    page.goto(f"{url}/admin/login/")
    page.fill("#id_username", portal.username)
    page.fill("#id_password", portal.password)
    page.locator('input[type="submit"]').click()
    expect(page).to_have_url(f"{url}/admin/")


CANVAS_STATS = """() => {
    const canvas = document.querySelector('#vnc-screen canvas');
    if (!canvas || !canvas.width || !canvas.height) return null;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0, hash = 0;
    for (let i = 0; i < data.length; i += 4) {
        const v = data[i] + data[i + 1] + data[i + 2];
        if (v > 60) lit++;
        hash = (hash * 31 + v) | 0;
    }
    return {width: canvas.width, height: canvas.height, lit: lit / (data.length / 4), hash};
}"""


def _watch_screen(page: Page, *, seconds: float) -> list[dict[str, Any]]:
    """The canvas's size, lit fraction and a hash, every half second."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stats = page.evaluate(CANVAS_STATS)
        if stats:
            seen.append(stats)
        page.wait_for_timeout(500)
    return seen


def _open_vnc(page: Page, url: str, guest: Guest, shot: str) -> list[dict[str, Any]]:
    page.goto(f"{url}/consoles/{guest.pk}/vnc/")
    expect(page.locator("#vnc-password-hint")).to_be_visible()
    expect(page.locator("#vnc-password")).to_be_visible(timeout=30_000)  # the server asked (RFB VNC authentication)
    _shot(page, f"{shot}-password")
    page.fill("#vnc-password-input", PASSWORD)
    page.locator("#vnc-password-input").press("Enter")
    expect(page.locator("#console-status")).to_have_attribute("data-state", "connected", timeout=30_000)
    expect(page.locator("#vnc-cad")).to_be_enabled()
    expect(page.locator("#vnc-password-hint")).to_be_hidden()  # once in, the screen gets the room
    screens = _watch_screen(page, seconds=8)
    _shot(page, f"{shot}-screen")
    return screens


def _serial_text(page: Page) -> str:
    return str(page.locator("#serial-screen .xterm-rows").inner_text())


def _open_serial_and_ask(page: Page, url: str, guest: Guest, shot: str) -> str:
    page.goto(f"{url}/consoles/{guest.pk}/serial/")
    expect(page.locator("#console-status")).to_have_attribute("data-state", "connected", timeout=30_000)
    page.locator("#serial-screen").click()
    deadline = time.monotonic() + BOOT_TIMEOUT
    while PROMPT.strip() not in _serial_text(page) and time.monotonic() < deadline:
        page.keyboard.press("Enter")  # the guest may still be booting; its shell answers Enter with a prompt
        page.wait_for_timeout(2000)
    assert PROMPT.strip() in _serial_text(page), f"no shell prompt on the serial console:\n{_serial_text(page)}"
    page.keyboard.type("echo $((6*7))")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [line.strip() for line in _serial_text(page).splitlines()]
        if "42" in lines:
            break
        page.wait_for_timeout(300)
    _shot(page, f"{shot}-serial")
    return _serial_text(page)


def test_the_graphical_and_serial_consoles_of_a_running_guest(page: Page, portal: Portal, guest: Guest):
    _log_in(page, portal.url, portal)
    # The VM's page has the Console buttons; the graphical one opens the console in a new tab.
    page.goto(f"{portal.url}/admin/vms/virtualmachine/{guest.pk}/change/")
    button = page.locator("a.vapor-console-button", has_text="Console").first
    expect(button).to_be_visible()
    _shot(page, "01-vm-page-buttons")
    with page.context.expect_page() as opened:
        button.click()
    console = opened.value
    console.wait_for_load_state()
    assert console.url.startswith(f"{portal.url}/consoles/{guest.pk}/vnc/")
    console.close()

    screens = _open_vnc(page, portal.url, guest, "02-vnc")
    assert screens, "the noVNC canvas never had a size"
    assert max(s["lit"] for s in screens) > 0.001, f"the screen stayed blank: {screens[-1]}"
    assert len({s["hash"] for s in screens}) > 1, "the screen did not change while the guest booted"
    # Ctrl-Alt-Del, fullscreen and scaling are there and usable.
    expect(page.locator("#vnc-fullscreen")).to_be_enabled()
    page.locator("#vnc-scale").click()
    expect(page.locator("#vnc-scale")).to_have_attribute("aria-pressed", "false")

    text = _open_serial_and_ask(page, portal.url, guest, "03")
    assert "42" in [line.strip() for line in text.splitlines()], text
    page.goto(f"{portal.url}/admin/")  # the serial page closes its websocket; the session is recorded
    time.sleep(1.5)

    # The sessions on the VM's event log, with their user.
    status, vm = portal_api(portal, guest.token, "GET", f"/api/v1/virtualmachines/{guest.pk}")
    consoles = [e for e in vm["events"] if e["step"].startswith("console ")]
    steps = {e["step"] for e in consoles if "closed" in e["message"]}
    assert {"console vnc", "console serial"} <= steps, consoles
    assert all(e["user"] == portal.username for e in consoles), consoles

    # The VNC password: in no page, API answer, log or ticket row.
    bodies = [page.content(), json.dumps(vm)]
    for path in (f"/consoles/{guest.pk}/vnc/", f"/consoles/{guest.pk}/serial/", f"/admin/vms/virtualmachine/{guest.pk}/change/"):
        page.goto(f"{portal.url}{path}")
        bodies.append(page.content())
    logs = [p.read_text(errors="replace") for p in portal.logs.glob("*.log")]
    with sqlite3.connect(portal.data_dir / "db.sqlite3") as db:
        rows = [str(row) for row in db.execute("select * from vms_consoleticket")]
    assert rows and not [b for b in bodies + logs + rows if PASSWORD in b]


def test_the_same_consoles_through_nginx_with_tls(browser: Browser, tls_portal: TlsPortal, guest: Guest):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, ignore_https_errors=True)  # the test's own CA
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        url = tls_portal.url
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        _log_in(page, url, tls_portal.portal)
        screens = _open_vnc(page, url, guest, "04-tls-vnc")
        assert screens and max(s["lit"] for s in screens) > 0.001
        text = _open_serial_and_ask(page, url, guest, "05-tls")
        assert "42" in [line.strip() for line in text.splitlines()], text
        assert sockets and all(s.startswith(f"wss://127.0.0.1:{url.rsplit(':', 1)[1]}/ws/consoles/") for s in sockets), sockets
    finally:
        context.close()
    access = (tls_portal.logs / "access.log").read_text(errors="replace")
    assert "/ws/consoles/" in access and " 101 " in access
