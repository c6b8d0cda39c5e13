"""Shared steps of the browser tests: screenshots' folders, logging in, the page's width, the portal's API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


def portal_api(portal: Portal, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One call to the portal's REST API with a token: (status, decoded JSON body), errors included."""
    request = urllib.request.Request(
        f"{portal.url}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # our own loopback portal
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
