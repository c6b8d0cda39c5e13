"""The API docs work offline (issue 13, point 6): Swagger UI and ReDoc from Vapor's own static files, the schema shown in a browser."""

from __future__ import annotations

import re

import pytest
import yaml
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
URL = re.compile(r"""(?:https?:)?//([^/\s"'<>]+)""")


def foreign_hosts(page: str) -> set[str]:
    """Hosts other than the test server that the page's markup or inline script names."""
    return {host for host in URL.findall(page) if host != "testserver"}


def assets(page: str) -> list[str]:
    return re.findall(r"""<(?:script|link)[^>]+(?:src|href)="([^"]+)\"""", page)


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_docs_pages_load_only_local_files(admin_client, url):
    response = admin_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert foreign_hosts(page) == set()
    assert "default-src 'self'" in response["Content-Security-Policy"] and "img-src 'self' data:" in response["Content-Security-Policy"]
    loaded = assets(page)
    assert loaded and all(src.startswith("/static/") for src in loaded), loaded
    for src in loaded:
        assert finders.find(src.removeprefix("/static/")), f"{src} is not among the static files"


def test_swagger_ui_and_redoc_come_from_the_sidecar(admin_client):
    swagger = assets(admin_client.get("/api/docs/").content.decode())
    redoc = assets(admin_client.get("/api/redoc/").content.decode())
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in swagger
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in redoc
    assert "fonts.googleapis" not in admin_client.get("/api/redoc/").content.decode()


def test_a_browser_is_shown_the_schema_as_text(client):
    response = client.get("/api/schema/", HTTP_ACCEPT=BROWSER_ACCEPT)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8" and response["X-Content-Type-Options"] == "nosniff"
    assert not response["Content-Disposition"].startswith("attachment")
    schema = yaml.safe_load(response.content)
    assert schema["info"]["title"] == "Vapor API" and "/api/v1/virtualmachines/isos" in schema["paths"]


@pytest.mark.parametrize(
    ("accept", "query", "content_type"),
    [
        ("*/*", "", "application/vnd.oai.openapi; charset=utf-8"),  # curl, scripts: YAML as before
        ("", "", "application/vnd.oai.openapi; charset=utf-8"),
        ("application/json", "", "application/json"),
        ("application/vnd.oai.openapi+json", "", "application/vnd.oai.openapi+json"),
        ("*/*", "?format=json", "application/vnd.oai.openapi+json"),
    ],
)
def test_scripts_get_the_schema_as_before(client, accept, query, content_type):
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = client.get(f"/api/schema/{query}", **headers)
    assert (response.status_code, response["Content-Type"]) == (200, content_type)
