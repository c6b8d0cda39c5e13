"""Snapshots on the VM page (issue 14 item 4), in Chromium at 1280x900 against the portal under `manage.py serve`
and the real libvirtd: the "Take snapshot" form takes one of a shut-off VM, the Snapshots panel lists it, Revert and
Delete go through their confirmation pages, and libvirt holds exactly what the page says.

Screenshots go to var/artifacts/browser/snapshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import log_in, portal_api, shots_dir
from tests.browser.conftest import Portal
from tests.browser.test_vm_page_browser import _create_running_vm, _token
from tests.integration.conftest import unique, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def _shot(page: Page, directory: Path, name: str) -> None:
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def test_take_revert_and_delete_a_snapshot_on_the_vm_page(portal: Portal, page: Page):
    shots = shots_dir("snapshots")
    token = _token(portal)
    name = unique("snapshots-browser")
    pk = _create_running_vm(portal, token, name)
    try:
        assert portal_api(portal, token, "POST", f"/api/v1/virtualmachines/{pk}/force-stop")[0] == 200
        log_in(page, portal)
        page.goto(f"{portal.url}/admin/vms/virtualmachine/{pk}/change/")
        panel = page.locator("#vapor-snapshots")
        expect(panel).to_contain_text("No snapshots.")
        page.fill("#vapor-snapshot-name", "before-upgrade")
        page.fill("#vapor-snapshot-description", "a clean install")
        page.locator('#vapor-snapshot-take input[type="submit"]').click()
        expect(page.locator(".messagelist")).to_contain_text(f"Snapshot before-upgrade of {name} taken.")
        row = panel.locator('tr.vapor-snapshot[data-name="before-upgrade"]')
        expect(row).to_contain_text("a clean install")
        expect(row).to_contain_text("shutoff")
        assert virsh("snapshot-list", name, "--name").stdout.split() == ["before-upgrade"]
        _shot(page, shots, "1-vm-page-with-snapshot")

        row.locator("a.vapor-snapshot-revert").click()
        expect(page.locator("h1")).to_contain_text(f"Revert snapshot before-upgrade of {name}?")
        _shot(page, shots, "2-revert-confirmation")
        page.locator('#vapor-snapshot-confirm input[type="submit"]').click()
        expect(page.locator(".messagelist")).to_contain_text(f"VM {name} reverted to snapshot before-upgrade, now shutoff.")

        page.fill("#vapor-snapshot-name", "before-upgrade")
        page.locator('#vapor-snapshot-take input[type="submit"]').click()
        expect(page.locator(".messagelist .error")).to_contain_text("already has a snapshot named")
        _shot(page, shots, "3-duplicate-refused")

        panel.locator('tr.vapor-snapshot[data-name="before-upgrade"] a.vapor-snapshot-delete').click()
        expect(page.locator("h1")).to_contain_text("Delete snapshot before-upgrade")
        page.locator('#vapor-snapshot-confirm input[type="submit"]').click()
        expect(page.locator(".messagelist")).to_contain_text("deleted")
        expect(panel).to_contain_text("No snapshots.")
        assert virsh("snapshot-list", name, "--name").stdout.split() == []
    finally:
        portal_api(portal, token, "DELETE", f"/api/v1/virtualmachines/{pk}")
        for snapshot in virsh("snapshot-list", name, "--name", check=False).stdout.split():
            virsh("snapshot-delete", name, snapshot, "--metadata", check=False)
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)
