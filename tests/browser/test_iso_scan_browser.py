"""An ISO dropped into the ISO directory appears in the ISO list after "Scan now" (issue 13, point 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.cockpit_support import log_in, shots_dir
from tests.browser.conftest import ROOT, Portal
from tests.support.isos import make_iso, make_non_iso

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

HOLD_SCHEDULE = (
    "from datetime import timedelta; from django.utils import timezone; from django_q.models import Schedule; "
    "Schedule.objects.filter(func='isos.tasks.scan_iso_dirs').update(next_run=timezone.now() + timedelta(hours=1))"
)


def moved_in(path: Path) -> Path:
    """As `mv` from elsewhere on the same file system leaves it: readable, last modified a while ago."""
    path.chmod(0o644)
    then = time.time() - 600
    os.utime(path, (then, then))
    return path


def test_an_iso_dropped_into_the_directory_appears_after_scan_now(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = shots_dir("iso-scan")
    # The schedule would find the file within 5 minutes by itself; held back here, so the button is what finds it.
    subprocess.run([sys.executable, "manage.py", "shell", "-c", HOLD_SCHEDULE], cwd=ROOT, env=portal.env, check=True, timeout=120)
    log_in(page, portal)
    page.goto(f"{portal.url}/admin/isos/isoimage/")
    expect(page.locator("#vapor-iso-dirs")).to_contain_text(str(portal.iso_dir))
    expect(page.locator("#result_list")).to_have_count(0)  # the library is empty
    page.screenshot(path=str(shots / "01-empty-list.png"))

    iso = moved_in(make_iso(portal.iso_dir / "debian-12.5.0-amd64-netinst.iso", label="Debian 12.5.0 amd64 n", boot="hybrid"))
    moved_in(make_iso(portal.iso_dir / ".ubuntu.iso.iso-0123456789ab.part", label="PARTIAL"))
    moved_in(make_non_iso(portal.iso_dir / "SHA256SUMS", b"0123  debian-12.5.0-amd64-netinst.iso\n"))

    page.locator("#vapor-scan-now").click()
    page.wait_for_load_state()
    messages = page.locator(".messagelist")
    expect(messages).to_contain_text("registered 1, unchanged 0, changed 0, skipped 2, errors 0")
    expect(messages).to_contain_text(f"Registered {iso} (hashing in the background)")
    expect(messages).to_contain_text("not an ISO 9660 or UDF image")
    row = page.locator("#result_list tbody tr", has_text="debian-12.5.0-amd64-netinst.iso")
    expect(row).to_have_count(1)
    page.screenshot(path=str(shots / "02-after-scan-now.png"))

    # The worker hashes it; the list refreshes itself while it does.
    expect(row.locator("td.field-status_column")).to_have_text("Ready", timeout=60_000)
    expect(row.locator("td.field-boot_type")).to_have_text("BIOS + UEFI")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)  # the partial download and the checksums file are not ISOs here

    # A second scan finds it unchanged.
    page.locator("#vapor-scan-now").click()
    expect(page.locator(".messagelist")).to_contain_text("registered 0, unchanged 1")
    page.screenshot(path=str(shots / "03-ready-and-rescanned.png"))

    # Its page says where it came from, in words that are true.
    row.locator("th a").click()
    expect(page.locator(".field-origin")).to_contain_text("A file on the host, registered by its path")
    expect(page.locator(".field-added_at")).to_contain_text("Added at")
    page.screenshot(path=str(shots / "04-iso-page.png"), full_page=True)
