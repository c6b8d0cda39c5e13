"""Shared steps of the dashboard, API docs and ISO scan browser tests (issue 13, points 1, 5, 6)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, ViewportSize, expect

from tests.browser.conftest import ARTIFACTS, Portal

VIEWPORT: ViewportSize = {"width": 1280, "height": 900}


def shots_dir(name: str) -> Path:
    """var/artifacts/browser/NAME/, emptied of earlier screenshots (the `artifacts` fixture only empties the top)."""
    directory = ARTIFACTS / name
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.png"):
        old.unlink()
    return directory


def log_in(page: Page, portal: Portal) -> None:
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{portal.url}/admin/login/")
    page.fill("#id_username", portal.username)
    page.fill("#id_password", portal.password)
    page.locator('input[type="submit"]').click()
    expect(page).to_have_url(f"{portal.url}/admin/")


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"))
