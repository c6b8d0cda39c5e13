"""The "Change hardware" page in Chromium (1280x900) against the portal under `manage.py serve` and the real libvirtd:
the VM page's button leads to it; memory changes live; a refused maximum is shown on its field; a NIC is added.

Screenshots go to var/artifacts/browser/hardware/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import log_in, no_horizontal_scroll, portal_api, shots_dir
from tests.browser.conftest import ROOT, Portal
from tests.integration.conftest import unique, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def _token(portal: Portal) -> str:
    made = subprocess.run(
        [sys.executable, "manage.py", "drf_create_token", portal.username],
        cwd=ROOT, env=portal.env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return made.stdout.split()[2]


def test_change_hardware_page(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("hardware")
    token = _token(portal)
    name = unique("hardware-page")
    payload = {"name": name, "memory": 256, "max_memory": 384, "vcpus": 1, "max_vcpus": 2, "storage_pool": portal.pool,
               "disks": [{"size": 1}], "networks": [{"type": "nat", "source": portal.network}]}  # fmt: skip
    status, body = portal_api(portal, token, "POST", "/api/v1/virtualmachines/create-enhanced", payload)
    assert status == 202, body
    pk = int(body["id"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and body["status"] not in ("running", "failed"):
            time.sleep(0.5)
            _, body = portal_api(portal, token, "GET", f"/api/v1/virtualmachines/{pk}")
        assert body["status"] == "running", body
        log_in(page, portal)
        page.goto(f"{portal.url}/admin/vms/virtualmachine/{pk}/change/")
        page.locator("a.vapor-hardware-button").click()
        expect(page).to_have_url(f"{portal.url}/admin/vms/virtualmachine/{pk}/hardware/")
        expect(page.locator("#id_max_memory")).to_have_value("384")
        assert no_horizontal_scroll(page)
        page.screenshot(path=str(shots / "1-hardware-page.png"), full_page=True)

        page.fill("#id_memory", "384")
        page.fill("#id_vcpus", "2")
        page.locator("#vapor-hardware-apply").click()
        expect(page.locator(".messagelist .success")).to_contain_text("Changed memory, vcpus; live: memory, vcpus.")
        live = virsh("dumpxml", name).stdout
        assert "<currentMemory unit='KiB'>393216</currentMemory>" in live and "current='2'" not in live, live
        page.screenshot(path=str(shots / "2-applied-live.png"), full_page=True)

        page.fill("#id_max_memory", "1024")
        page.locator("#vapor-hardware-apply").click()
        expect(page.locator(".field-max_memory .errorlist")).to_contain_text("stop the VM to change it")
        page.screenshot(path=str(shots / "3-refused-on-its-field.png"), full_page=True)

        page.goto(f"{portal.url}/admin/vms/virtualmachine/{pk}/hardware/")
        page.select_option("#vapor-add-nic select[name=type]", "nat")
        page.fill("#vapor-add-nic input[name=source]", portal.network)
        page.fill("#vapor-add-nic input[name=mac]", "52:54:00:5e:00:42")
        page.locator("#vapor-add-nic-submit").click()
        expect(page.locator("#vapor-nics")).to_contain_text("52:54:00:5e:00:42")
        assert "52:54:00:5e:00:42" in virsh("dumpxml", name).stdout
        page.screenshot(path=str(shots / "4-nic-added.png"), full_page=True)
    finally:
        portal_api(portal, token, "DELETE", f"/api/v1/virtualmachines/{pk}")
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
