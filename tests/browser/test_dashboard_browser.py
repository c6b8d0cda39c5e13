"""The dashboard in a real browser at 1280x900 (issue 13, point 1): Compute first, "Create virtual machine",
host capacity with the storage pools' free space, "View site", and no request left unanswered (the favicon)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, Response, expect

from tests.browser.cockpit_support import log_in, no_horizontal_scroll, shots_dir
from tests.browser.conftest import Portal

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def test_the_dashboard_puts_vms_first_and_shows_the_hosts_capacity(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("dashboard")
    failed: list[str] = []

    def watch(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page.on("response", watch)
    log_in(page, portal)

    # The first thing on the page: the button to create a VM.
    button = page.locator("#vapor-create-vm")
    expect(button).to_be_visible()
    expect(button).to_have_text("Create virtual machine")
    box = button.bounding_box()
    assert box is not None and box["y"] < 300, box  # above the fold, near the top
    # Host capacity: memory, vCPUs and this portal's scratch pool with its free space.
    expect(page.locator("#vapor-memory")).to_contain_text("MB of")
    expect(page.locator("#vapor-vcpus")).to_contain_text("CPUs")
    pool = page.locator(f'tr.vapor-pool[data-pool="{portal.pool}"]')
    expect(pool).to_contain_text(re.compile(r"free of"))
    expect(page.locator("#vapor-failures")).to_be_visible()
    # The app list: Compute (the vms app) first, the plumbing last.
    apps = page.locator("#content-main div.module[class*='app-']").evaluate_all(
        "els => els.map(e => [...e.classList].find(c => c.startsWith('app-')))"
    )
    assert apps[:3] == ["app-vms", "app-isos", "app-projects"] and apps[-1] == "app-django_q", apps
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(shots / "01-dashboard.png"))
    page.screenshot(path=str(shots / "02-dashboard-full.png"), full_page=True)

    # The favicon: linked, and /favicon.ico answers too.
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert icon == "/static/vaporsite/favicon.svg"
    for url in (icon, "/favicon.ico"):
        response = page.request.get(f"{portal.url}{url}")
        assert response.status == 200 and response.headers["content-type"].startswith("image/"), (url, response.status)

    # "View site" leads back here, not to a 404.
    page.get_by_role("link", name="View site").click()
    expect(page).to_have_url(f"{portal.url}/admin/")
    button.click()
    expect(page).to_have_url(f"{portal.url}/admin/vms/virtualmachine/add/")
    assert failed == [], failed
