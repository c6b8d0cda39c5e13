"""The VM page as a control panel and a delete that says what it does (issue 13, points 2, 4 and 7), in Chromium
at 1280x900 against the portal under `manage.py serve` and the real libvirtd: the power buttons change with the
domain's state; the VM list has no horizontal scroll; the delete confirmations name the domain and the files,
and "Keep disks" really keeps the volume on disk while a plain delete erases it.

Screenshots go to var/artifacts/browser/vm-page/.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import portal_api
from tests.browser.conftest import ARTIFACTS, ROOT, Portal
from tests.integration.conftest import unique, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

SHOTS = ARTIFACTS / "vm-page"
PROVISION_TIMEOUT = 120.0
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")  # to the second, with the zone


def _token(portal: Portal) -> str:
    made = subprocess.run(
        [sys.executable, "manage.py", "drf_create_token", portal.username],
        cwd=ROOT,
        env=portal.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return made.stdout.split()[2]


def _create_running_vm(portal: Portal, token: str, name: str) -> int:
    payload = {"name": name, "memory": 256, "vcpus": 1, "storage_pool": portal.pool, "disks": [{"size": 1}]}
    status, body = portal_api(portal, token, "POST", "/api/v1/virtualmachines/create-enhanced", payload)
    assert status == 202, body
    pk = int(body["id"])
    deadline = time.monotonic() + PROVISION_TIMEOUT
    vm: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, vm = portal_api(portal, token, "GET", f"/api/v1/virtualmachines/{pk}")
        if vm["status"] in ("running", "failed"):
            break
        time.sleep(0.5)
    assert vm["status"] == "running", vm
    return pk


def _shot(page: Page, name: str, *, full_page: bool = False) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _power_buttons(page: Page) -> list[str]:
    return [" ".join(text.split()) for text in page.locator(".object-tools button.vapor-power-button").all_inner_texts()]


def _no_horizontal_scroll(page: Page) -> dict[str, int]:
    widths = page.evaluate(
        """() => {
            const results = document.querySelector('#changelist .results');
            return {page: document.documentElement.scrollWidth, viewport: window.innerWidth,
                    results: results.scrollWidth, box: results.clientWidth};
        }"""
    )
    assert widths["page"] <= widths["viewport"] and widths["results"] <= widths["box"], widths
    return widths


def test_vm_page_buttons_list_width_and_delete_confirmations(page: Page, portal: Portal, artifacts: Path) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    token = _token(portal)
    kept_name, erased_name = unique("vmpage-keep"), unique("vmpage-erase")
    try:
        kept_pk = _create_running_vm(portal, token, kept_name)
        erased_pk = _create_running_vm(portal, token, erased_name)
        kept_volume, erased_volume = portal.pool_dir / f"{kept_name}-disk0.qcow2", portal.pool_dir / f"{erased_name}-disk0.qcow2"
        assert kept_volume.exists() and erased_volume.exists()

        page.goto(f"{portal.url}/admin/login/")
        page.fill("#id_username", portal.username)
        page.fill("#id_password", portal.password)
        page.locator('input[type="submit"]').click()
        expect(page).to_have_url(f"{portal.url}/admin/")

        # 1. The VM page of a running VM: its title, breadcrumb and the buttons a running VM allows, beside the consoles.
        vm_page = f"{portal.url}/admin/vms/virtualmachine/{kept_pk}/change/"
        page.goto(vm_page)
        expect(page.locator("h1")).to_have_text(f"Virtual machine: {kept_name}")
        expect(page.locator(".breadcrumbs")).to_have_text(" \u203a ".join(["Home", "Compute", "Virtual machines", kept_name]))
        assert _power_buttons(page) == ["SHUT DOWN", "FORCE OFF", "REBOOT"]
        expect(page.locator(".object-tools a.vapor-console-button")).to_have_count(2)
        expect(page.locator("#disks-group td.original p")).to_have_count(0)  # no "NAME vda" above the rows
        expect(page.locator(".field-console .readonly")).to_contain_text("VNC on 127.0.0.1:59")
        expect(page.locator(".field-created_at .readonly")).to_have_text(TIME)
        _shot(page, "01-running-vm-page")
        _shot(page, "02-running-vm-page-full", full_page=True)

        # 2. Force off: the message, the domain shut off, and only Start offered.
        page.locator("button.vapor-power-force-stop").click()
        expect(page.locator(".messagelist .success")).to_have_text(f"Force off: {kept_name}, now stopped.")
        assert virsh("domstate", kept_name).stdout.strip() == "shut off"
        assert _power_buttons(page) == ["START"]
        expect(page.locator(".object-tools a.vapor-console-button")).to_have_count(0)
        expect(page.locator(".field-status .readonly")).to_have_text("Stopped")
        _shot(page, "03-stopped-vm-page")

        # 3. Start: running again, the three buttons back.
        page.locator("button.vapor-power-start").click()
        expect(page.locator(".messagelist .success")).to_have_text(f"Start: {kept_name}, now running.")
        assert virsh("domstate", kept_name).stdout.strip() == "running"
        assert _power_buttons(page) == ["SHUT DOWN", "FORCE OFF", "REBOOT"]
        _shot(page, "04-started-vm-page")

        # 4. The list at 1280 px: every column visible, no sideways scrolling.
        page.goto(f"{portal.url}/admin/vms/virtualmachine/")
        expect(page.locator("h1")).to_have_text("Virtual machines")
        expect(page.locator(".object-tools a.addlink")).to_have_text("Create virtual machine")
        _shot(page, "05-vm-list-1280")
        widths = _no_horizontal_scroll(page)
        row = page.locator("#result_list tbody tr", has_text=kept_name)
        expect(row.locator("td.field-size")).to_have_text("256 MB · 1 vCPU")
        assert TIME.match(" ".join(row.locator("td.field-checked").inner_text().split())), row.locator("td.field-checked").inner_text()
        print(f"VM list widths at 1280x900: {widths}")

        # 5. Delete from the VM page: the domain and the volume named; "Keep disks" moves the volume to the kept list.
        page.goto(vm_page)
        page.locator(".submit-row a.deletelink").click()
        expect(page.locator("h1")).to_have_text(f"Delete virtual machine {kept_name}?")
        plan = page.locator(f"#vapor-delete-plan-{kept_pk}")
        expect(plan.locator(".vapor-domain")).to_have_text(kept_name)
        expect(plan.locator(".vapor-when-deleting .vapor-erased")).to_contain_text(str(kept_volume))
        expect(plan.locator(".vapor-when-keeping")).to_be_hidden()
        _shot(page, "06-delete-confirmation")
        page.locator("#id_keep_disks").check()
        expect(plan.locator(".vapor-when-deleting")).to_be_hidden()
        expect(plan.locator(".vapor-when-keeping .vapor-kept")).to_contain_text(
            f"{kept_volume}: disk vda, a volume Vapor created (Keep disks)"
        )
        expect(plan.locator(".vapor-when-keeping .vapor-erased")).to_have_text("no file")
        _shot(page, "07-delete-confirmation-keep-disks")
        page.locator(f'input[type="submit"][value="Delete {kept_name}"]').click()
        expect(page.locator(".messagelist .success")).to_contain_text(f"The virtual machine {kept_name} was deleted")
        gone = virsh("dominfo", kept_name, check=False)
        assert gone.returncode != 0, gone
        assert kept_volume.exists(), "Keep disks erased the volume"
        _shot(page, "08-deleted-disks-kept")

        # 6. Delete from the list's action menu: a confirmation first, naming the file; then the volume is gone.
        page.locator(f'input.action-select[value="{erased_pk}"]').check()
        page.select_option('select[name="action"]', label="Delete the selected VMs")
        page.locator('button[name="index"]').click()
        expect(page.locator("h1")).to_have_text("Delete the selected virtual machines?")
        plan = page.locator(f"#vapor-delete-plan-{erased_pk}")
        expect(plan.locator(".vapor-when-deleting .vapor-erased")).to_contain_text(str(erased_volume))
        assert virsh("domstate", erased_name).stdout.strip() == "running", "the list's Delete acted before it was confirmed"
        _shot(page, "09-list-delete-confirmation", full_page=True)
        page.locator('input[type="submit"][value="Delete 1 virtual machine"]').click()
        expect(page.locator(".messagelist .success")).to_contain_text(f"Delete: {erased_name}; domain {erased_name} undefined, 1 file(s)")
        assert virsh("dominfo", erased_name, check=False).returncode != 0
        assert not erased_volume.exists(), "the plain delete left the volume"
        _shot(page, "10-list-after-delete")
    finally:
        for name in (kept_name, erased_name):
            virsh("destroy", name, check=False)
            virsh("undefine", name, "--nvram", "--tpm", check=False)
