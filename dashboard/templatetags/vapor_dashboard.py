"""`{% vapor_dashboard as dash %}`: the admin index dashboard's data for the current user.

The index needs it twice, in the head (whether to refresh) and in the body,
so the first use of a render keeps it in the render context and the second
reuses it: the queries and the hypervisor lookup run once per page.
"""

from __future__ import annotations

from django import template

from dashboard.selectors import Dashboard, dashboard_for

register = template.Library()

_KEY = "vapor_dashboard"


@register.simple_tag(takes_context=True)
def vapor_dashboard(context: template.Context) -> Dashboard | None:
    request = context.get("request")
    if request is None:
        return None
    if _KEY not in context.render_context:
        context.render_context[_KEY] = dashboard_for(user=request.user)
    dashboard: Dashboard = context.render_context[_KEY]
    return dashboard
