"""The API's documentation pages and its schema, readable in a browser on a host without internet.

Swagger UI (`/api/docs/`) and ReDoc (`/api/redoc/`) load their scripts from
drf-spectacular-sidecar's static files (settings.SPECTACULAR_SETTINGS, "SIDECAR"),
never from a CDN; the ReDoc page is Vapor's own template, without the web fonts
drf-spectacular's links to. A Content-Security-Policy on both pages lets the
browser load nothing from another host (ReDoc's bundle would fetch a logo).

`/api/schema/` answers scripts as drf-spectacular does (YAML by default, JSON for
`Accept: application/json` or `?format=json`). A browser asks for `text/html`
first; it would be handed `application/vnd.oai.openapi`, which it saves as a
file. It gets the same YAML as `text/plain` instead, which it shows. Never as
HTML: the schema holds text written by people (descriptions), and plain text
with `nosniff` cannot run anything.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.renderers import OpenApiYamlRenderer
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response


class BrowserYamlRenderer(OpenApiYamlRenderer):
    """The YAML schema for a client that asked for a page (a browser). Chosen only when `text/html` is asked
    for by name: it is the last renderer, so `*/*` and the OpenAPI types still get what they got."""

    media_type = "text/html"
    format = "txt"


class SchemaView(SpectacularAPIView):
    renderer_classes = [*SpectacularAPIView.renderer_classes, BrowserYamlRenderer]

    @extend_schema(exclude=True)  # as drf-spectacular's own: the schema's URL is not an operation of the API
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)
        if isinstance(request.accepted_renderer, BrowserYamlRenderer):
            response.content_type = "text/plain; charset=utf-8"
            response["X-Content-Type-Options"] = "nosniff"
        return response


# The docs pages may load only what this server serves. Both pages carry an inline script (the Swagger UI
# set-up, Redoc.init) and inject styles; ReDoc builds its search worker from a blob. ReDoc's side bar also
# shows a logo from its maker's CDN: without this policy the browser would try to fetch it on every view.
DOCS_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)


class _OwnFilesOnly:
    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        response["Content-Security-Policy"] = DOCS_CSP
        return response


class SwaggerView(_OwnFilesOnly, SpectacularSwaggerView):
    pass


class RedocView(_OwnFilesOnly, SpectacularRedocView):
    template_name = "api_docs/redoc.html"
