"""The graphs for real (issue 13, point 8): Chromium against the portal under `manage.py serve` and qcluster, a
TCG guest booting the shell probe ISO, sampled by `manage.py sample_metrics` on the portal's own database (what the
worker's minute schedule runs); its VM page must draw a CPU graph from those real samples, the hour/day switch must
work, and the dashboard must draw the host's graphs.

Screenshots go to var/artifacts/browser/graphs/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.bootiso import build_shell_iso
from tests.browser.cockpit_support import portal_api
from tests.browser.conftest import ARTIFACTS, Portal
from tests.integration.conftest import unique, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ARTIFACTS / "graphs"


@dataclass(frozen=True)
class Guest:
    pk: int
    name: str


def _manage(portal: Portal, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=portal.env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def guest(portal: Portal) -> Iterator[Guest]:
    """A VM created through the API from the shell ISO, running; deleted at the end."""
    token = _manage(portal, "drf_create_token", portal.username).split()[2]
    iso = portal.iso_dir / "shell.iso"
    shutil.copyfile(build_shell_iso(), iso)
    iso.chmod(0o644)
    name = unique("graphs-vm")
    status, body = portal_api(
        portal,
        token,
        "POST",
        "/api/v1/virtualmachines/create-enhanced",
        {"name": name, "memory": 256, "vcpus": 1, "iso_path": str(iso), "storage_pool": portal.pool, "disks": [{"size": 1}]},
    )
    assert status == 202, body
    pk = int(body["id"])
    vm: dict[str, Any] = {}
    for _ in range(240):
        status, vm = portal_api(portal, token, "GET", f"/api/v1/virtualmachines/{pk}")
        if vm["status"] in ("running", "failed"):
            break
        time.sleep(0.5)
    assert vm["status"] == "running", vm
    try:
        yield Guest(pk=pk, name=name)
    finally:
        portal_api(portal, token, "DELETE", f"/api/v1/virtualmachines/{pk}")
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", check=False)


def _shot(page: Page, locator_css: str, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.locator(locator_css).scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    return path


def _log_in(page: Page, portal: Portal) -> None:
    page.goto(f"{portal.url}/admin/login/")
    page.fill("#id_username", portal.username)
    page.fill("#id_password", portal.password)
    page.locator('input[type="submit"]').click()
    expect(page).to_have_url(f"{portal.url}/admin/")


def _percent(text: str) -> float:
    match = re.search(r"([\d.]+) %", text)
    assert match, text
    return float(match.group(1))


def test_a_running_guests_vm_page_draws_its_cpu_graph_from_real_samples(page: Page, portal: Portal, guest: Guest) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    _log_in(page, portal)
    # Before any sample: the empty state says when samples come.
    page.goto(f"{portal.url}/admin/vms/virtualmachine/{guest.pk}/change/")
    graphs = page.locator("#vapor-graphs")
    expect(graphs).to_be_visible()
    cpu = graphs.locator('figure[data-chart="cpu"]')
    if not cpu.locator("svg").count():  # the worker's schedule may have sampled twice already
        expect(cpu).to_contain_text("No samples yet — sampled every minute while the VM runs.")
        _shot(page, "#vapor-graphs", "01-vm-graphs-empty")

    # The guest boots under TCG meanwhile: sample the real host as the worker does, six rounds 5 s apart.
    out = _manage(portal, "sample_metrics", "--rounds", "6", "--interval", "5")
    assert "VM samples" in out and "round 6:" in out, out

    page.goto(f"{portal.url}/admin/vms/virtualmachine/{guest.pk}/change/?graphs=hour")  # a new query: a real reload
    cpu = page.locator('#vapor-graphs figure[data-chart="cpu"]')
    expect(cpu.locator("svg")).to_be_visible()
    assert cpu.locator("polyline.vapor-chart-line").count() >= 1  # a line through at least two real samples
    assert _percent(cpu.locator(".vapor-chart-last").inner_text()) > 0  # a booting TCG guest uses its CPU
    for chart in ("memory", "disk", "network"):
        expect(page.locator(f'#vapor-graphs figure[data-chart="{chart}"] svg')).to_be_visible()
    assert "MiB" in page.locator('#vapor-graphs figure[data-chart="memory"] .vapor-chart-last').inner_text()
    # The page does not scroll sideways at 1280 px.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    _shot(page, "#vapor-graphs", "02-vm-graphs-hour")

    page.locator("#vapor-graphs .vapor-graphs-spans a", has_text="Last day").click()
    expect(page.locator("#vapor-graphs .vapor-graphs-spans a.current")).to_have_text("Last day")
    expect(page.locator("#vapor-graphs")).to_contain_text("ten-minute averages")
    expect(page.locator('#vapor-graphs figure[data-chart="cpu"] svg')).to_be_visible()
    _shot(page, "#vapor-graphs", "03-vm-graphs-day")

    # The dashboard: the host's graphs.
    page.goto(f"{portal.url}/admin/")
    host = page.locator("#vapor-host-graphs")
    expect(host).to_be_visible()
    host_cpu = host.locator('figure[data-chart="cpu"]')
    expect(host_cpu.locator("svg")).to_be_visible()
    assert _percent(host_cpu.locator(".vapor-chart-last").inner_text()) > 0
    _shot(page, "#vapor-host-graphs", "04-dashboard-host-graphs")
    page.locator("#vapor-host-graphs .vapor-graphs-spans a", has_text="Last day").click()
    expect(page.locator("#vapor-host-graphs .vapor-graphs-spans a.current")).to_have_text("Last day")
    _shot(page, "#vapor-host-graphs", "05-dashboard-host-graphs-day")
