"""The VM page's Disks & CD-ROMs panel in Chromium (1280x900) against the portal and the real libvirtd: a disk
attached to the running VM from the page's form appears in the domain, then grows; a shrink and a SATA
attach are refused with a message and leave the domain's XML (live and inactive) byte-identical.

Screenshots go to var/artifacts/browser/disks/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import log_in, no_horizontal_scroll, portal_api, shots_dir
from tests.browser.conftest import Portal
from tests.browser.test_vm_page_browser import _create_running_vm, _token
from tests.integration.conftest import unique, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def test_disks_panel_attaches_and_refuses_on_the_vm_page(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("disks")
    token = _token(portal)
    name = unique("disks-br")
    pk = _create_running_vm(portal, token, name)
    try:
        log_in(page, portal)
        page.goto(f"{portal.url}/admin/vms/virtualmachine/{pk}/change/")
        panel = page.locator("#vapor-disks")
        expect(panel).to_contain_text("Disks & CD-ROMs")
        expect(panel).to_contain_text("vda")
        page.locator("#vapor-disk-forms").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "panel.png"), full_page=True)
        assert no_horizontal_scroll(page)

        form = page.locator("#vapor-disk-attach")
        form.locator('input[name="size"]').fill("1")
        form.locator('select[name="bus"]').select_option("virtio")
        form.locator('button[type="submit"]').click()
        expect(page.locator(".messagelist .success")).to_contain_text("Disk vdb attached (1 GB, virtio).")
        assert "dev='vdb'" in virsh("dumpxml", name).stdout
        assert "dev='vdb'" in virsh("dumpxml", "--inactive", name).stdout
        expect(page.locator("#vapor-disks")).to_contain_text("vdb")
        page.screenshot(path=str(shots / "attached.png"), full_page=True)

        grow = page.locator("#vapor-disk-grow")
        grow.locator('select[name="target_dev"]').select_option("vdb")
        grow.locator('input[name="size_gb"]').fill("2")
        grow.locator('button[type="submit"]').click()
        expect(page.locator(".messagelist .success")).to_contain_text("Disk vdb is now 2 GB.")
        before = virsh("dumpxml", name).stdout, virsh("dumpxml", "--inactive", name).stdout
        shrink = page.locator("#vapor-disk-grow")
        shrink.locator('select[name="target_dev"]').select_option("vdb")
        shrink.locator('input[name="size_gb"]').fill("1")
        shrink.locator('button[type="submit"]').click()
        expect(page.locator(".messagelist .error")).to_contain_text("Refused (size_gb)")
        sata = page.locator("#vapor-disk-attach")
        sata.locator('select[name="bus"]').select_option("sata")
        sata.locator('button[type="submit"]').click()
        expect(page.locator(".messagelist .error")).to_contain_text("cannot be attached live")
        assert (virsh("dumpxml", name).stdout, virsh("dumpxml", "--inactive", name).stdout) == before
        page.screenshot(path=str(shots / "refused.png"), full_page=True)
    finally:
        portal_api(portal, token, "DELETE", f"/api/v1/virtualmachines/{pk}")
