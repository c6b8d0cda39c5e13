"""The graphs (issue 13, point 8): the SVG charts (escaping, gaps, units, the empty state), the VM page's Graphs
section with its hour/day switch, the dashboard's host graphs, and who sees them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.template import Context, RequestContext, Template
from django.test import Client, RequestFactory
from django.utils import timezone

from tests.fakes import FakeHypervisor
from tests.support.factories import AdminFactory, UserFactory, VirtualMachineFactory
from tests.support.projects import join
from vaporsite.charts import Line, format_value, line_chart
from vms.models import HostMetricSample, VirtualMachine, VmMetricSample
from vms.templatetags.vapor_vm_graphs import VM_EMPTY

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR: dict[str, Any] = {"start": T0, "end": T0 + timedelta(hours=1), "gap": timedelta(minutes=2, seconds=30)}


def _points(minutes: list[int], value: float = 10.0) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(minutes=m), value) for m in minutes]


# --- the charts ------------------------------------------------------------------


def test_every_text_of_a_chart_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    html = line_chart(
        title=hostile, unit="%", lines=[Line('<img src=x onerror="y">', _points([1, 2])), Line(hostile, [])], empty=hostile, **HOUR
    )
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=&quot;y&quot;&gt;" in html


def test_the_empty_state_says_when_samples_come() -> None:
    html = line_chart(title="CPU", unit="%", lines=[Line("CPU", [])], empty=VM_EMPTY, **HOUR)
    assert "<svg" not in html
    assert "No samples yet — sampled every minute while the VM runs." in html
    assert 'class="vapor-chart is-empty"' in html


def test_missing_samples_break_the_line() -> None:
    unbroken = line_chart(title="CPU", unit="%", lines=[Line("CPU", _points(list(range(1, 11))))], empty="", **HOUR)
    broken = line_chart(title="CPU", unit="%", lines=[Line("CPU", _points([1, 2, 3, 4, 10, 11, 12]))], empty="", **HOUR)
    assert unbroken.count("<polyline") == 1
    assert broken.count("<polyline") == 2


def test_axes_carry_units_and_local_times_and_the_title_the_last_value(settings) -> None:
    settings.TIME_ZONE = "Europe/Paris"  # UTC+1 in March
    with timezone.override("Europe/Paris"):
        html = line_chart(
            title="Disk I/O",
            unit="B/s",
            lines=[Line("read", [(T0 + timedelta(minutes=5), 1000.0), (T0 + timedelta(minutes=6), 300 * 1024.0)], "teal")],
            empty="",
            **HOUR,
        )
    assert ">300 KiB/s</b>" in html  # the last value beside the title
    assert re.search(r">\d+ KiB/s</text>", html)  # y labels with the unit
    assert ">10:10</text>" in html  # x labels in local time (09:10 UTC)


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(0, "B/s", "0 B/s"), (2048, "B/s", "2 KiB/s"), (1536, "MiB", "1.5 GiB"), (12.345, "%", "12.3 %"), (5 * 2**20, "B/s", "5 MiB/s")],
)
def test_values_are_written_in_a_readable_unit(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_an_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unit"):
        line_chart(title="x", unit="furlongs", lines=[], empty="", **HOUR)


# --- the VM page -----------------------------------------------------------------


def _samples(vm: VirtualMachine, count: int = 30) -> None:
    now = timezone.now()
    VmMetricSample.objects.bulk_create(
        VmMetricSample(
            vm=vm,
            at=now - timedelta(minutes=m),
            resolution=60,
            cpu_percent=37.5,
            memory_mib=400,
            disk_read_bps=10,
            disk_write_bps=20,
            net_rx_bps=30,
            net_tx_bps=40,
        )
        for m in range(count)
    )


def _page(client: Client, vm: VirtualMachine, query: str = "") -> str:
    response = client.get(f"/admin/vms/virtualmachine/{vm.pk}/change/{query}")
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_the_vm_page_draws_its_four_graphs(admin_client: Client, hv: FakeHypervisor) -> None:
    vm = VirtualMachineFactory.create(name="graphs-vm")
    _samples(vm)
    page = _page(admin_client, vm)
    assert 'id="vapor-graphs"' in page
    for chart in ("cpu", "memory", "disk", "network"):
        assert f'data-chart="{chart}"' in page
    assert ">37.5 %</b>" in page and ">400 MiB</b> of 1 GiB" in page
    assert page.count("<polyline") >= 6  # CPU, memory, two disk lines, two network lines
    assert 'href="?graphs=day#vapor-graphs"' in page
    assert "one point a minute" in page


@pytest.mark.django_db
def test_the_day_switch_shows_ten_minute_averages(admin_client: Client, hv: FakeHypervisor) -> None:
    vm = VirtualMachineFactory.create(name="graphs-vm")
    _samples(vm)
    page = _page(admin_client, vm, "?graphs=day")
    assert "ten-minute averages" in page
    assert re.search(r'<a href="\?graphs=day#vapor-graphs" class="current"', page)
    assert ">37.5 %</b>" in page
    assert "one point a minute" in _page(admin_client, vm, "?graphs=<bogus>")  # anything else: the hour


@pytest.mark.django_db
def test_a_vm_without_samples_says_when_they_come(admin_client: Client, hv: FakeHypervisor) -> None:
    vm = VirtualMachineFactory.create(name="quiet-vm")
    page = _page(admin_client, vm)
    assert page.count(VM_EMPTY) == 4
    assert "<polyline" not in page


def _tag(user: object, vm: VirtualMachine) -> str:
    request = RequestFactory().get("/")
    request.user = user  # type: ignore[assignment]
    template = Template("{% load vapor_vm_graphs %}{% vapor_vm_graphs as g %}{% if g %}GRAPHS{{ g.charts|length }}{% endif %}")
    return template.render(RequestContext(request, {"original": vm}))


@pytest.mark.django_db
def test_only_users_who_may_view_the_vm_see_its_graphs(client: Client, hv: FakeHypervisor) -> None:
    vm = VirtualMachineFactory.create(name="private-vm")
    _samples(vm)
    member = UserFactory.create(is_staff=True)
    join(member, "viewer")  # the VM's (default) project
    outsider = UserFactory.create(is_staff=True)
    join(outsider, "operator", "elsewhere")  # may view VMs, but none of this project
    assert _tag(AdminFactory.create(), vm) == "GRAPHS4"
    assert _tag(member, vm) == "GRAPHS4"
    assert _tag(outsider, vm) == ""
    assert _tag(UserFactory.create(is_staff=True), vm) == ""  # no permission at all
    assert _tag(AnonymousUser(), vm) == ""
    member.is_active = False  # still a member, but holds no permission any more
    assert _tag(member, vm) == ""
    assert Template("{% load vapor_vm_graphs %}{% vapor_vm_graphs as g %}[{{ g }}]").render(Context({"original": vm})) == "[None]"
    client.force_login(outsider)
    assert client.get(f"/admin/vms/virtualmachine/{vm.pk}/change/").status_code in (302, 404)


# --- the dashboard ---------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_draws_the_hosts_graphs_for_who_may_view_vms(client: Client, hv: FakeHypervisor) -> None:
    now = timezone.now()
    HostMetricSample.objects.bulk_create(
        HostMetricSample(
            at=now - timedelta(minutes=m),
            resolution=60,
            cpu_percent=12.5,
            memory_mib=2048,
            memory_total_mib=16384,
            disk_read_bps=0,
            disk_write_bps=0,
            net_rx_bps=0,
            net_tx_bps=0,
        )
        for m in range(5)
    )
    client.force_login(AdminFactory.create())
    page = client.get("/admin/").content.decode()
    assert 'id="vapor-host-graphs"' in page and ">12.5 %</b>" in page and ">2 GiB</b> of 16 GiB" in page
    assert 'href="?graphs=day#vapor-host-graphs"' in page
    isos_only = UserFactory.create(is_staff=True, apps=["isos"])
    client.force_login(isos_only)
    page = client.get("/admin/").content.decode()
    assert "vapor-host-graphs" not in page


@pytest.mark.django_db
def test_the_dashboard_says_when_host_samples_come(admin_client: Client, hv: FakeHypervisor) -> None:
    page = admin_client.get("/admin/").content.decode()
    assert page.count("No samples yet — the host is sampled every minute by the worker.") == 4
