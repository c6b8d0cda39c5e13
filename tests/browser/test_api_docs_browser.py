"""The API docs on a host without internet (issue 13, point 6): every request to another host is aborted, and
Swagger UI and ReDoc still render their operations; the schema shows in the browser instead of downloading."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.cockpit_support import log_in, shots_dir
from tests.browser.conftest import Portal

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]


def offline(page: Page, portal: Portal) -> list[str]:
    """Abort every request that is not to the portal; the list of what was tried goes back to the test."""
    own = urlsplit(portal.url).netloc
    tried: list[str] = []

    def handle(route: Route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).netloc == own:
            route.continue_()
        else:
            tried.append(url)
            route.abort("internetdisconnected")

    page.route("**/*", handle)
    return tried


def test_swagger_ui_and_redoc_render_with_the_network_blocked(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("api-docs")
    tried = offline(page, portal)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}") if message.type == "error" else None)
    log_in(page, portal)  # logged in, "Try it out" works with the session

    page.goto(f"{portal.url}/api/docs/")
    operations = page.locator(".opblock-summary-path")
    expect(operations.first).to_be_visible(timeout=20_000)
    paths = [" ".join(text.split()) for text in operations.all_inner_texts()]
    assert "/api/v1/virtualmachines/create-enhanced" in paths, paths
    assert "/api/v1/virtualmachines/isos" in paths
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Vapor API")
    page.screenshot(path=str(shots / "01-swagger-ui.png"))
    # One operation opened: its parameters and responses are there too.
    page.locator("[id$='-vms_create_enhanced'] .opblock-summary").click()
    expect(page.locator("[id$='-vms_create_enhanced'] .responses-wrapper")).to_be_visible()
    page.locator("[id$='-vms_create_enhanced']").evaluate("e => e.scrollIntoView()")
    page.screenshot(path=str(shots / "02-swagger-ui-operation.png"))

    page.goto(f"{portal.url}/api/redoc/")
    expect(page.locator("h1", has_text="Vapor API")).to_be_visible(timeout=20_000)
    expect(page.get_by_text("/api/v1/virtualmachines/create-enhanced").first).to_be_attached()
    expect(page.locator("li[data-item-id] label").first).to_be_visible()
    page.screenshot(path=str(shots / "03-redoc.png"))

    # The schema is shown, not downloaded.
    response = page.goto(f"{portal.url}/api/schema/")
    assert response is not None and response.headers["content-type"].startswith("text/plain")
    expect(page.locator("body")).to_contain_text("openapi: 3.0.3")
    page.screenshot(path=str(shots / "04-schema.png"))

    assert tried == [], f"the pages tried to reach other hosts: {tried}"
    # What the Content-Security-Policy held back is ReDoc's logo only; nothing the pages need.
    blocked = [line for line in console if "Content Security Policy" in line]
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in line for line in blocked), console
