"""Guest addresses in the admin (issue 14, point 2), in Chromium at 1280x900 against the portal under `manage.py serve`
and the real libvirtd: the VM page's Refresh button reads the host (message, check time, agent channel), the
"Network addresses" panel shows stored addresses with their source, and the VM list shows the IP under the status and still fits 1280 px.

Screenshots go to var/artifacts/browser/addresses/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ARTIFACTS, ROOT, Portal
from tests.browser.test_vm_page_browser import _create_running_vm, _no_horizontal_scroll, _power_buttons, _token
from tests.integration.conftest import unique

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

SHOTS = ARTIFACTS / "addresses"
STORE = """
from vms.models import NetworkInterface
nic = NetworkInterface.objects.get(vm_id={pk})
nic.addresses = [{{"address": "192.168.122.77", "prefix": 24, "family": "ipv4", "source": "lease"}},
                 {{"address": "fe80::5054:ff:fe00:77", "prefix": 64, "family": "ipv6", "source": "agent"}}]
nic.save()
"""


def _shot(page: Page, name: str, *, full_page: bool = False) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def test_refresh_button_panel_and_ip_column(page: Page, portal: Portal, artifacts: Path) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    token = _token(portal)
    name = unique("vmpage-ip")  # a name like test_vm_page_browser's: the list's width is checked with the same names
    pk = _create_running_vm(portal, token, name)
    page.goto(f"{portal.url}/admin/login/")
    page.fill("#id_username", portal.username)
    page.fill("#id_password", portal.password)
    page.locator('input[type="submit"]').click()

    vm_page = f"{portal.url}/admin/vms/virtualmachine/{pk}/change/"
    page.goto(vm_page)
    assert _power_buttons(page) == ["SHUT DOWN", "FORCE OFF", "REBOOT"]  # Refresh is not one of them
    panel = page.locator("#vapor-addresses")
    expect(panel.locator("h2")).to_have_text("Network addresses")
    expect(panel).to_contain_text("Not checked yet")

    page.locator("#vapor-refresh-form button").click()
    expect(page.locator(".messagelist .success")).to_have_text(f"Read from the host: VM {name} is running, 0 address(es).")
    expect(panel).to_contain_text(re.compile(r"Checked at .*guest agent: not connected", re.S))  # the channel is there, no agent runs
    expect(panel.locator("tbody")).to_contain_text("no address known")
    _shot(page, "01-vm-page-after-refresh", full_page=True)

    subprocess.run([sys.executable, "manage.py", "shell", "-c", STORE.format(pk=pk)], cwd=ROOT, env=portal.env, check=True, timeout=120)
    page.goto(vm_page)
    rows = panel.locator("tr.vapor-address")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("192.168.122.77/24")
    expect(rows.nth(0)).to_contain_text("DHCP lease")
    expect(rows.nth(1)).to_contain_text("guest agent")
    panel.scroll_into_view_if_needed()
    _shot(page, "02-vm-page-addresses-panel")

    page.goto(f"{portal.url}/admin/vms/virtualmachine/")
    row = page.locator("#result_list tbody tr", has_text=name)
    expect(row.locator("td.field-status_badge .vapor-ip")).to_have_text("192.168.122.77")
    _shot(page, "03-vm-list-ip")
    _no_horizontal_scroll(page)
