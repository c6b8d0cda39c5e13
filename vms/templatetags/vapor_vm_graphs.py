"""`{% vapor_vm_graphs as graphs %}`: the VM page's graphs (issue 13, point 8), for users who may view the VM.

Reads the page's `original` VM and the `graphs` query parameter ("hour", the
default, or "day"), and draws CPU, memory, disk and network charts from
`vms.services.metrics.metrics_series` as server-side SVG (`vaporsite.charts`).
A user who may not view VMs, or whose projects do not hold this one, gets
nothing. `metric_charts` is shared with the dashboard's host graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import template
from django.http import HttpRequest
from django.utils.safestring import SafeString

from projects.access import in_visible_projects
from vaporsite.charts import Line, line_chart
from vms.models import VirtualMachine
from vms.services.metrics import SPANS, MetricSeries, metrics_series

register = template.Library()

PARAMETER = "graphs"
VM_EMPTY = "No samples yet — sampled every minute while the VM runs."
SPAN_LABELS = {"hour": "Last hour", "day": "Last day"}


@dataclass(frozen=True)
class SpanLink:
    label: str
    url: str  # the page's own query string with `graphs=` set
    current: bool


@dataclass(frozen=True)
class Graphs:
    span: str
    charts: list[SafeString]
    links: list[SpanLink]
    resolution_text: str


def may_view(user: Any, app_label: str, model_name: str) -> bool:
    """As ModelAdmin.has_view_permission: change implies view."""
    return any(user.has_perm(f"{app_label}.{action}_{model_name}") for action in ("view", "change"))


def chosen_span(request: HttpRequest) -> str:
    span = request.GET.get(PARAMETER, "hour")
    return span if span in SPANS else "hour"


def span_links(request: HttpRequest, span: str, anchor: str) -> list[SpanLink]:
    links = []
    for value, label in SPAN_LABELS.items():
        query = request.GET.copy()
        query[PARAMETER] = value
        links.append(SpanLink(label, f"?{query.urlencode()}#{anchor}", value == span))
    return links


def metric_charts(series: MetricSeries, *, empty: str, cpu_title: str = "CPU") -> list[SafeString]:
    """CPU, memory, disk and network charts of `series`, in that order."""
    points = series.points
    gap = timedelta(seconds=series.resolution * 2.5)  # a missed round or two breaks the line
    common: dict[str, Any] = {"start": series.start, "end": series.end, "gap": gap, "empty": empty}

    def line(label: str, field: str, color: str) -> Line:
        return Line(label, [(p.at, getattr(p.rates, field)) for p in points], color)

    return [
        line_chart(title=cpu_title, unit="%", lines=[line("CPU", "cpu_percent", "blue")], ident="cpu", **common),
        line_chart(
            title="Memory used",
            unit="MiB",
            lines=[line("used", "memory_mib", "purple")],
            ceiling=series.memory_total_mib,
            ident="memory",
            **common,
        ),
        line_chart(
            title="Disk I/O",
            unit="B/s",
            lines=[line("read", "disk_read_bps", "teal"), line("write", "disk_write_bps", "orange")],
            ident="disk",
            **common,
        ),
        line_chart(
            title="Network",
            unit="B/s",
            lines=[line("in", "net_rx_bps", "green"), line("out", "net_tx_bps", "rose")],
            ident="network",
            **common,
        ),
    ]


def resolution_text(series: MetricSeries) -> str:
    return "one point a minute" if series.resolution == 60 else "ten-minute averages"


@register.simple_tag(takes_context=True)
def vapor_vm_graphs(context: template.Context) -> Graphs | None:
    request = context.get("request") or getattr(context, "request", None)  # an `include ... only` keeps it on the context
    vm = context.get("original")
    if request is None or not isinstance(vm, VirtualMachine) or vm.pk is None:
        return None
    user = request.user
    if not may_view(user, "vms", "virtualmachine"):
        return None
    if not in_visible_projects(VirtualMachine.objects.filter(pk=vm.pk), user).exists():
        return None
    span = chosen_span(request)
    series = metrics_series(vm=vm, span=span)
    return Graphs(
        span=span,
        charts=metric_charts(series, empty=VM_EMPTY, cpu_title="CPU (of its vCPUs)"),
        links=span_links(request, span, "vapor-graphs"),
        resolution_text=resolution_text(series),
    )
