"""The SSH keys admin page and the VM page's cloud-init panel, in Chromium against the portal and the real libvirtd:
a key refused with the checker's words, a key saved with its fingerprint, and a VM created with `cloud_init` naming
no key, whose seed carries the profile's key (shown by fingerprint on the VM page).

Screenshots go to var/artifacts/browser/cloud-init/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import log_in, portal_api, shots_dir
from tests.browser.conftest import Portal
from tests.browser.test_vm_page_browser import _token
from tests.integration.conftest import virsh
from tests.support.sshkeys import ed25519_key, fingerprint

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def test_ssh_keys_page_and_the_vm_pages_cloud_init_panel(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("cloud-init")
    key = ed25519_key("operator@laptop")
    log_in(page, portal)
    page.goto(f"{portal.url}/admin/vms/sshpublickey/add/")
    page.fill("#id_name", "laptop")
    page.fill("#id_key", "ssh-rsa " + key.split()[1])
    page.locator('input[name="_save"]').click()
    expect(page.locator(".errorlist")).to_contain_text("holds 'ssh-ed25519', not ssh-rsa")
    page.screenshot(path=str(shots / "01-key-refused.png"), full_page=True)
    page.fill("#id_key", key)
    page.locator('input[name="_save"]').click()
    page.goto(f"{portal.url}/admin/vms/sshpublickey/")
    expect(page.locator("#result_list")).to_contain_text(fingerprint(key))
    page.screenshot(path=str(shots / "02-keys-list.png"), full_page=True)

    token = _token(portal)
    name = "cloudinit-browser"
    payload = {
        "name": name, "memory": 256, "vcpus": 1, "storage_pool": portal.pool, "disks": [{"size": 1}],
        "cloud_init": {"hostname": "web-1", "user_data": "#cloud-config\npassword: hunter2-secret\n"},
    }  # fmt: skip
    try:
        status, body = portal_api(portal, token, "POST", "/api/v1/virtualmachines/create-enhanced", payload)
        assert status == 202, body
        vm: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _, vm = portal_api(portal, token, "GET", f"/api/v1/virtualmachines/{body['id']}")
            if vm["status"] in ("running", "failed"):
                break
            time.sleep(0.5)
        assert vm["status"] == "running", vm
        assert vm["cloud_init"]["ssh_authorized_keys"] == [key]
        page.goto(f"{portal.url}/admin/vms/virtualmachine/{body['id']}/change/")
        panel = page.locator("#vapor-cloud-init")
        expect(panel).to_contain_text("web-1")
        expect(panel).to_contain_text(fingerprint(key))
        expect(panel).to_contain_text(f"{name}-cidata.iso")
        expect(panel.locator(".vapor-user-data")).to_contain_text("hunter2-secret")  # a superuser may change the VM
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "03-vm-page-cloud-init.png"), full_page=True)
        assert portal_api(portal, token, "DELETE", f"/api/v1/virtualmachines/{body['id']}")[0] == 204
        assert not (portal.pool_dir / f"{name}-cidata.iso").exists()
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", "--tpm", check=False)
