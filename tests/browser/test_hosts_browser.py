"""The hosts' admin pages in a real browser at 1280x900 (issue 15): add a host that does not answer through the
form (it is saved, then checked: down with libvirt's words), the list with both hosts' health, the default host's
page with its facts, Check now; screenshots in var/artifacts/browser/hosts/."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import log_in, no_horizontal_scroll, shots_dir
from tests.browser.conftest import Portal

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_hosts_pages(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("hosts")
    log_in(page, portal)
    dead_uri = f"qemu+tcp://127.0.0.1:{closed_port()}/system"

    page.goto(f"{portal.url}/admin/vms/host/add/")
    page.fill("#id_name", "far-away")
    page.fill("#id_uri", dead_uri)
    page.locator('input[name="_save"]').click()
    expect(page.locator("ul.messagelist")).to_contain_text("far-away")

    page.goto(f"{portal.url}/admin/vms/host/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#result_list")).to_contain_text("far-away")
    expect(page.locator("#result_list .vapor-health-down")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("VAPOR_LIBVIRT_URI")

    page.locator("#result_list a", has_text="default").click()
    page.locator("#vapor-host-check").click()
    expect(page.locator("ul.messagelist")).to_contain_text("Host default answers.")
    expect(page.locator("table.vapor-facts").last).to_contain_text("UEFI · Secure Boot · TPM")
    expect(page.locator("table.vapor-facts").last).to_contain_text(portal.pool)
    expect(page.locator(".field-health_badge")).to_contain_text("Up")
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(shots / "01-default-host.png"), full_page=True)

    page.goto(f"{portal.url}/admin/vms/host/")
    expect(page.locator("#result_list .vapor-health-up")).to_have_count(1)  # the default host, checked just now
    expect(page.locator("#result_list .vapor-health-down")).to_have_count(1)
    assert no_horizontal_scroll(page)
    # every column within the list's box (Django's results box scrolls sideways rather than the page)
    assert page.evaluate("() => { const r = document.querySelector('.results'); return r.scrollWidth <= r.clientWidth; }")
    page.screenshot(path=str(shots / "02-list.png"), full_page=True)

    page.goto(f"{portal.url}/admin/vms/host/")
    page.locator("#result_list a", has_text="far-away").click()
    expect(page.locator(".field-last_error")).to_contain_text("cannot connect to")
    page.locator("#vapor-host-check").click()
    expect(page.locator("ul.messagelist")).to_contain_text("Host far-away does not answer")
    page.screenshot(path=str(shots / "03-dead-host.png"), full_page=True)
