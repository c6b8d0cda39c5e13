"""`{% vapor_host_graphs as graphs %}`: the host's graphs on the admin dashboard (issue 13, point 8).

For users who may view VMs (as the dashboard's VM section): the host is shared
by every project, like its memory and vCPU figures beside it. The span comes
from the `graphs` query parameter ("hour" or "day"); the charts are the VM
page's (`vms.templatetags.vapor_vm_graphs.metric_charts`) over the host's samples.
"""

from __future__ import annotations

from django import template

from vms.services.metrics import host_metrics_series
from vms.templatetags.vapor_vm_graphs import Graphs, chosen_span, may_view, metric_charts, resolution_text, span_links

register = template.Library()

HOST_EMPTY = "No samples yet — the host is sampled every minute by the worker."


@register.simple_tag(takes_context=True)
def vapor_host_graphs(context: template.Context) -> Graphs | None:
    request = context.get("request") or getattr(context, "request", None)  # an `include ... only` keeps it on the context
    if request is None or not may_view(request.user, "vms", "virtualmachine"):
        return None
    span = chosen_span(request)
    series = host_metrics_series(span=span)
    return Graphs(
        span=span,
        charts=metric_charts(series, empty=HOST_EMPTY, cpu_title="Host CPU (all CPUs)"),
        links=span_links(request, span, "vapor-host-graphs"),
        resolution_text=resolution_text(series),
    )
