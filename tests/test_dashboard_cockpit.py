"""The admin index as the operator's cockpit (issue 13, point 1): app order, the create button, pools, View site, favicon."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib import admin
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.template.defaultfilters import filesizeformat
from django.test import Client

from dashboard.sites import app_rank
from tests.fakes import FakeHypervisor
from tests.support.factories import AdminFactory, UserFactory, VirtualMachineFactory
from tests.support.projects import join
from vms.hypervisor import PoolInfo

pytestmark = pytest.mark.django_db
INDEX = "/admin/"


@pytest.fixture(autouse=True)
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache.clear()
    fake = FakeHypervisor(pool_dir=tmp_path)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", lambda uri=None: fake)
    yield fake
    cache.clear()


def login(*codenames: str, superuser: bool = False) -> Client:
    client = Client()
    user = AdminFactory.create() if superuser else UserFactory.create(is_staff=True, permissions=codenames)
    if any(codename.endswith("_virtualmachine") for codename in codenames):
        join(user, "operator" if "add_virtualmachine" in codenames else "viewer")
    client.force_login(user)
    return client


def html(client: Client, url: str = INDEX) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_the_app_list_puts_compute_first_and_the_plumbing_last():
    main = html(login(superuser=True)).split('id="content-main"')[1]
    order = re.findall(r'<div class="app-(\w+) module', main)
    assert order == ["vms", "isos", "projects", "auth", "authtoken", "django_q"]
    # Inside Compute, the VMs come first.
    vms = main.split('<div class="app-vms module')[1].split('<div class="app-isos module')[0]
    assert vms.index('class="model-virtualmachine') < vms.index('class="model-vmtemplate') < vms.index('class="model-consoleticket')


def test_the_side_bar_has_the_same_order():
    page = html(login(superuser=True), "/admin/isos/isoimage/")
    sidebar = page.split('id="nav-sidebar"')[1]
    assert re.findall(r'<div class="app-(\w+) module', sidebar)[:3] == ["vms", "isos", "projects"]


def test_app_rank_keeps_unknown_apps_between_the_first_and_the_last():
    assert sorted(["django_q", "zeta", "auth", "isos", "vms"], key=app_rank) == ["vms", "isos", "zeta", "auth", "django_q"]


def test_the_create_button_is_shown_only_to_who_may_create_a_vm():
    button = '<a class="button vapor-primary" id="vapor-create-vm" href="/admin/vms/virtualmachine/add/">Create virtual machine</a>'
    assert button in html(login(superuser=True))
    assert button in html(login("view_virtualmachine", "add_virtualmachine"))
    assert "vapor-create-vm" not in html(login("view_virtualmachine"))
    assert "vapor-create-vm" not in html(login("view_isoimage"))


def test_each_pools_free_space_is_shown(host, monkeypatch):
    pools = [
        PoolInfo("images", True, True, "/var/lib/libvirt/images", 500 * 2**30, 400 * 2**30, 100 * 2**30),
        PoolInfo("fast", True, False, "/srv/fast", 200 * 2**30, 20 * 2**30, 180 * 2**30),
        PoolInfo("old", False, False, "/srv/old", 0, 0, 0),
    ]
    monkeypatch.setattr(host, "list_pools", lambda: pools)
    page = html(login(superuser=True))
    rows = re.findall(r'<tr class="vapor-pool" data-pool="(\w+)">(.*?)</tr>', page, re.S)
    assert [name for name, _ in rows] == ["fast", "images", "old"]  # by name
    cells = dict(rows)
    assert f"{filesizeformat(180 * 2**30)} free</span> of {filesizeformat(200 * 2**30)}" in cells["fast"]
    assert 'title="10% used"></meter> 10%</td>' in cells["fast"]
    assert (
        f"{filesizeformat(100 * 2**30)} free</span> of {filesizeformat(500 * 2**30)}" in cells["images"] and 'value="80"' in cells["images"]
    )
    assert "inactive" in cells["old"]


def test_the_pools_come_with_the_cached_host_answer(host):
    client = login(superuser=True)
    html(client)
    html(client)
    assert host.calls["host_resources"] == 1  # and list_pools on the same connection, cached with it


def test_recent_failures_link_to_the_vm():
    broken = VirtualMachineFactory.create(name="broken", status="failed", error="pool full")
    page = html(login(superuser=True))
    failures = page.split('id="vapor-failures"')[1]
    assert f'<a href="/admin/vms/virtualmachine/{broken.pk}/change/">broken</a>' in failures and "pool full" in failures


def test_view_site_and_the_root_lead_to_the_dashboard():
    client = login(superuser=True)
    assert str(admin.site.site_url) == INDEX
    assert f'<a href="{INDEX}">View site</a>' in html(client)
    response = client.get("/")
    assert (response.status_code, response["Location"]) == (302, INDEX)


def test_the_favicon_is_linked_from_every_admin_page_and_answers_at_favicon_ico():
    client = login(superuser=True)
    for who, url in ((client, INDEX), (client, "/admin/isos/isoimage/"), (Client(), "/admin/login/")):
        page = html(who, url)
        assert '<link rel="icon" href="/static/vaporsite/favicon.svg" type="image/svg+xml">' in page, url
    response = client.get("/favicon.ico")
    assert (response.status_code, response["Location"]) == (302, "/static/vaporsite/favicon.ico")
    ico, svg = finders.find("vaporsite/favicon.ico"), finders.find("vaporsite/favicon.svg")
    assert isinstance(ico, str) and isinstance(svg, str)
    assert Path(ico).read_bytes()[:4] == b"\0\0\1\0"  # an ICO file
    assert Path(svg).read_text().startswith("<svg")
