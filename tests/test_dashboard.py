"""The admin index dashboard (dashboard/selectors.py) and the VM change page's live refresh."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection
from django.template.defaultfilters import filesizeformat
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.asserts import assertInHTML

from isos.models import IsoImage
from tests.fakes import FakeHypervisor
from tests.support.factories import AdminFactory, IsoImageFactory, UserFactory, VirtualMachineFactory
from tests.support.projects import join
from vaporsite.errors import HypervisorError
from vms import encryption
from vms.hypervisor import HostResources
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
INDEX = "/admin/"
REFRESH = '<meta http-equiv="refresh"'
VNC_PLAIN = "vnc-Pl41n"


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """The host answer is cached in Django's cache, which outlives a test."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHypervisor:
    """A 16 GiB, 8-CPU fake host; `host.calls["get_hypervisor"]` counts drivers handed out."""
    fake = FakeHypervisor(pool_dir=tmp_path)

    def get_hypervisor(uri: str | None = None) -> FakeHypervisor:
        fake.calls["get_hypervisor"] += 1
        return fake

    monkeypatch.setattr("vms.hypervisor.get_hypervisor", get_hypervisor)
    return fake


@pytest.fixture
def superuser_client(client: Client) -> Client:
    client.force_login(AdminFactory.create())
    return client


def staff_client(*codenames: str) -> Client:
    client = Client()
    user = UserFactory.create(is_staff=True, permissions=codenames)
    if any(codename.endswith("_virtualmachine") for codename in codenames):
        join(user, "viewer")  # the VMs are in the default project: a viewer there sees them
    client.force_login(user)
    return client


def vm(name: str, status: str = "running", **fields: object) -> VirtualMachine:
    return VirtualMachineFactory.create(name=name, status=status, **fields)


def iso(name: str, status: str = "ready", **fields: object) -> IsoImage:
    return IsoImageFactory.create(name=name, status=status, **fields)


def seed(count: int, start: int = 0) -> None:
    """`count` VMs and `count` ISOs cycling through the statuses, failures and downloads included."""
    vm_statuses = ["running", "stopped", "failed", "provisioning"]
    iso_statuses = ["ready", "downloading", "failed", "hashing"]
    for n in range(start, start + count):
        vm(f"vm{n}", vm_statuses[n % 4], error="boom" if n % 4 == 2 else "")
        iso(f"iso{n}", iso_statuses[n % 4], size=2**20 * n, bytes_done=n, bytes_total=100, error="bad" if n % 4 == 2 else "")


def page(client: Client, url: str = INDEX) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def row(html: str, status: str) -> str:
    found = re.search(rf'<tr class="vapor-status-{status}">.*?</tr>', html, re.S)
    assert found, f"no row for {status}"
    return found.group(0)


def test_superuser_sees_counts_capacity_iso_library_downloads_and_failures(superuser_client, host):
    vm("web", "running", memory_mb=2048, vcpus=2)
    vm("db", "running", memory_mb=2048, vcpus=4)
    vm("idle", "stopped", memory_mb=8192, vcpus=8)
    broken = vm("broken", "failed", error="pool 'default' is full <b>")
    iso("ubuntu", size=3 * 2**30)
    iso("alpine", size=2**29)
    fetching = iso("debian", "downloading", bytes_done=250, bytes_total=1000)
    iso("fedora", "hashing", size=2**30, bytes_done=2**30, bytes_total=2**30)
    bad = iso("arch", "failed", error="checksum mismatch <script>alert(1)</script>")

    html = page(superuser_client)

    assertInHTML(
        '<tr class="vapor-status-running"><th scope="row"><a href="/admin/vms/virtualmachine/?status__exact=running">Running</a></th>'
        '<td class="vapor-count">2</td></tr>',
        html,
    )
    assert '<td class="vapor-count">1</td>' in row(html, "stopped") and '<td class="vapor-count">0</td>' in row(html, "deleting")
    assert "Virtual machines: 4" in html
    assert "4096 MB of 16384 MB" in html and 'value="25"' in html  # 4 GiB of the host's 16 GiB
    assert "6 of 8 CPUs" in html and 'value="75"' in html
    assert "fakehost (x86_64)" in html
    # ISO library: five images, 4.5 GiB, one per status here except ready (two).
    assert "ISO library: 5" in html and filesizeformat(3 * 2**30 + 2**29 + 2**30) in html
    assert '<td class="vapor-count">2</td>' in row(html, "ready") and "?status__exact=hashing" in row(html, "hashing")
    assertInHTML(
        f'<tr><th scope="row"><a href="/admin/isos/isoimage/{fetching.pk}/change/">debian</a></th><td>Downloading</td>'
        '<td><progress max="100" value="25.0">25.0%</progress> 25.0%</td></tr>',
        html,
    )
    assert '<progress max="100" value="99.0">' in html  # hashing: capped until verified
    # Failures: escaped, linked to their change pages.
    assert f'href="/admin/vms/virtualmachine/{broken.pk}/change/">broken</a>' in html
    assert "pool &#x27;default&#x27; is full &lt;b&gt;" in html
    assert f'href="/admin/isos/isoimage/{bad.pk}/change/">arch</a>' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    # The stock index is still there below the dashboard.
    assert "app-vms" in html and "recent-actions-module" in html


def test_failures_are_the_ten_latest_vms_and_isos_newest_first(superuser_client, host):
    start = timezone.now() - timedelta(days=1)
    for n in range(12):  # VM n failed at minute 2n, ISO n at minute 2n + 1
        VirtualMachine.objects.filter(pk=vm(f"vm{n:02}", "failed", error=f"vm error {n:02}").pk).update(
            updated_at=start + timedelta(minutes=2 * n)
        )
        IsoImage.objects.filter(pk=iso(f"iso{n:02}", "failed", error=f"iso error {n:02}").pk).update(
            updated_at=start + timedelta(minutes=2 * n + 1)
        )
    html = page(superuser_client)
    shown = list(dict.fromkeys(re.findall(r"(?:vm|iso) error \d\d", html)))
    assert shown == [f"{kind} error {n:02}" for n in range(11, 6, -1) for kind in ("iso", "vm")]


def test_query_count_is_the_same_for_3_and_30_vms_and_isos(superuser_client, host):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            page(superuser_client)
        return len(captured.captured_queries)

    seed(3)
    few = queries()
    seed(27, start=3)
    many = queries()
    # session, user, admin log, then the dashboard: VM totals, the hosts (issue 15: one read; their usage only
    # when there are several), ISO totals, downloads, failed VMs, failed ISOs; the host graphs' samples.
    assert few == many == 10


def test_host_is_asked_once_for_two_page_loads(superuser_client, host):
    vm("web", "running", memory_mb=4096, vcpus=2)
    page(superuser_client)
    html = page(superuser_client)
    assert host.calls["host_resources"] == 1 and host.calls["get_hypervisor"] == 1
    assert "4096 MB of 16384 MB" in html


def test_host_answer_is_cached_per_uri_and_expires(superuser_client, host, settings):
    page(superuser_client)
    host.host = HostResources(memory_bytes=64 * 2**30, cpus=32, model="x86_64", hostname="bighost")
    assert "of 16384 MB" in page(superuser_client)
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, libvirt_uri="qemu+ssh://other/system")
    assert "of 65536 MB" in page(superuser_client) and "32 CPUs" in page(superuser_client)
    assert host.calls["host_resources"] == 2
    cache.clear()  # what expiry does after 30 s
    settings.VAPOR = django_settings.VAPOR
    assert "bighost" in page(superuser_client) and host.calls["host_resources"] == 3


def test_unreachable_host_shows_the_message_and_the_rest_of_the_page(superuser_client, host):
    host.fail["host_resources"] = HypervisorError("cannot connect to qemu:///system: Failed to connect socket")
    vm("web", "running", memory_mb=512, vcpus=1)
    iso("ubuntu", size=2**30)
    html = page(superuser_client)
    assert "host unreachable: cannot connect to qemu:///system: Failed to connect socket" in html
    assert "Running VMs: 512 MB memory, 1 vCPUs." in html and "ISO library: 1" in html


def test_unreachable_host_with_the_real_driver(superuser_client, settings, tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, libvirt_uri=uri)
    html = page(superuser_client)
    assert "host unreachable: cannot connect to qemu+unix:///system?socket=" in html


def test_view_only_user_sees_the_sections(host):
    vm("broken", "failed", error="vm broke")
    iso("arch", "failed", error="iso broke")
    html = page(staff_client("view_virtualmachine", "view_isoimage"))
    assert all(f'id="vapor-{section}"' in html for section in ("vms", "isos", "failures"))
    assert "vm broke" in html and "iso broke" in html and "16384 MB" in html


def test_sections_follow_the_view_permission_of_their_model(host):
    vm("broken", "failed", error="vm broke")
    iso("arch", "failed", error="iso broke")
    html = page(staff_client("view_isoimage"))
    assert 'id="vapor-isos"' in html and 'id="vapor-vms"' not in html
    assert "iso broke" in html and "vm broke" not in html
    assert host.calls["host_resources"] == 0


def test_user_without_view_permissions_sees_no_dashboard(host):
    vm("broken", "failed", error="vm broke")
    iso("arch", "downloading", bytes_done=1, bytes_total=2)
    html = page(staff_client())
    assert 'id="vapor-dashboard"' not in html and "vm broke" not in html and "arch" not in html
    assert REFRESH not in html and host.calls["host_resources"] == 0


def test_vnc_password_is_never_shown_nor_read(superuser_client, host):
    blob = encryption.encrypt(VNC_PLAIN)
    target = vm("secret", "provisioning", graphics_password_encrypted=blob, graphics_password_set=True)
    vm("failed-secret", "failed", graphics_password_encrypted=blob, graphics_password_set=True, error="no")
    with CaptureQueriesContext(connection) as captured:
        index = page(superuser_client)
    assert not [q["sql"] for q in captured.captured_queries if "graphics_password_encrypted" in q["sql"]]
    change = page(superuser_client, f"/admin/vms/virtualmachine/{target.pk}/change/")
    for html in (index, change):
        assert VNC_PLAIN not in html and blob not in html


def test_index_refreshes_only_while_something_is_in_progress(superuser_client, host):
    isos = IsoImage.objects.filter(pk=iso("ubuntu", size=2**30).pk)
    vms = VirtualMachine.objects.filter(pk=vm("web", "running").pk)
    assert REFRESH not in page(superuser_client)
    for rows, busy, idle in [
        (isos, "downloading", "ready"),
        (isos, "hashing", "ready"),
        (vms, "provisioning", "running"),
        (vms, "deleting", "stopped"),
    ]:
        rows.update(status=busy)
        html = page(superuser_client)
        assert f'{REFRESH} content="5">' in html and "this page refreshes every 5 seconds" in html, busy
        rows.update(status=idle)
        assert REFRESH not in page(superuser_client), idle


def test_vm_change_page_refreshes_only_while_provisioning_or_deleting(superuser_client, host):
    machine = vm("web", "provisioning")
    url = f"/admin/vms/virtualmachine/{machine.pk}/change/"
    html = page(superuser_client, url)
    assert f'{REFRESH} content="2">' in html and "Provisioning… this page refreshes" in html
    VirtualMachine.objects.filter(pk=machine.pk).update(status="deleting")
    html = page(superuser_client, url)
    assert f'{REFRESH} content="2">' in html and "Deleting… this page refreshes" in html
    for status in ("running", "stopped", "failed"):
        VirtualMachine.objects.filter(pk=machine.pk).update(status=status)
        html = page(superuser_client, url)
        assert REFRESH not in html and "this page refreshes" not in html, status
