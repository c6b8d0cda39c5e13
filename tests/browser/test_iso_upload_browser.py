"""An ISO uploaded from the operator's machine through the admin (issue 14, point 5): chunks with a progress
bar, a failed chunk sent again, and the new ISO's page, READY with the file's own digests."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.cockpit_support import log_in, shots_dir
from tests.browser.conftest import Portal
from tests.support.isos import make_iso, make_non_iso

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

MIB = 1024 * 1024


def test_an_iso_uploaded_through_the_admin_lands_ready_on_its_page(page: Page, portal: Portal, artifacts: Path, tmp_path: Path) -> None:
    shots = shots_dir("iso-upload")
    # 20 MiB and a bit: three 8 MiB chunks, the last one short.
    source = make_iso(tmp_path / "debian-12.5.0-amd64-netinst.iso", label="Debian 12.5.0 amd64 n", boot="hybrid", size_padding=20 * MIB)
    data = source.read_bytes()
    log_in(page, portal)
    page.goto(f"{portal.url}/admin/isos/isoimage/")
    page.locator("#vapor-upload-link").click()
    expect(page).to_have_title("Upload an ISO image | Vapor")
    page.screenshot(path=str(shots / "01-upload-form.png"), full_page=True)

    # The second chunk fails once on the way (a dropped connection): the page sends it again.
    failed: list[str] = []

    def drop_once(route: Route) -> None:
        content_range = route.request.headers.get("content-range", "")
        if route.request.method == "PUT" and content_range.startswith(f"bytes {8 * MIB}-") and not failed:
            failed.append(content_range)
            route.abort("connectionreset")
            return
        route.continue_()

    page.route("**/api/v1/virtualmachines/isos/uploads/*", drop_once)
    page.set_input_files("#id_file", str(source))
    page.fill("#id_name", "Debian 12.5 netinst (uploaded)")
    page.fill("#id_tags", "debian, installer")
    page.fill("#id_sha256", hashlib.sha256(data).hexdigest())
    page.locator("#vapor-upload-start").click()
    expect(page.locator("#vapor-upload-progress")).to_be_visible()
    expect(page.locator("#vapor-upload-status")).to_contain_text("trying again")
    expect(page.locator("#vapor-upload-percent")).to_have_text(f"{math.floor(1000 * 8 * MIB / len(data)) / 10:.1f}%")  # one chunk landed
    page.screenshot(path=str(shots / "02-progress-retrying.png"), full_page=True)

    page.wait_for_url("**/admin/isos/isoimage/iso-*/change/", timeout=60_000)
    assert failed, "the second chunk was never sent, so never retried"
    expect(page.locator("h1")).to_have_text("ISO image: Debian 12.5 netinst (uploaded)")
    expect(page.locator(".field-status_column")).to_contain_text("Ready")
    expect(page.locator(".field-sha256_hash")).to_contain_text(hashlib.sha256(data).hexdigest())
    expect(page.locator(".field-md5_hash")).to_contain_text(hashlib.md5(data).hexdigest())
    expect(page.locator(".field-boot_type")).to_contain_text("BIOS + UEFI")
    expect(page.locator(".field-origin")).to_contain_text("Uploaded through Vapor")
    page.screenshot(path=str(shots / "03-ready-iso-page.png"), full_page=True)
    assert (portal.iso_dir / source.name).read_bytes() == data
    assert sorted(p.name for p in portal.iso_dir.iterdir()) == [source.name]  # no part file left

    # A file that is no ISO image is refused with the server's words, and nothing is left.
    junk = make_non_iso(tmp_path / "notes.iso", b"not an image\n" * 80)
    page.goto(f"{portal.url}/admin/isos/isoimage/upload/")
    page.set_input_files("#id_file", str(junk))
    page.locator("#vapor-upload-start").click()
    expect(page.locator("#vapor-upload-error")).to_contain_text("size:")  # 1 kB cannot hold the ISO volume descriptors
    junk = make_non_iso(tmp_path / "notes.iso", b"not an image\n" * 40_000)
    page.set_input_files("#id_file", str(junk))
    page.locator("#vapor-upload-start").click()
    expect(page.locator("#vapor-upload-error")).to_contain_text("file: notes.iso is not an ISO 9660 or UDF image")
    expect(page.locator("#vapor-upload-progress")).to_be_hidden()
    page.screenshot(path=str(shots / "04-refused-not-an-iso.png"), full_page=True)
    assert sorted(p.name for p in portal.iso_dir.iterdir()) == [source.name]
