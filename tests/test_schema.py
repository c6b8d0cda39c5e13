"""The OpenAPI schema: valid, warning-free, and describing the real endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.core.management import call_command


@pytest.mark.django_db
def test_schema_validates_without_warnings(tmp_path: Path) -> None:
    target = tmp_path / "schema.yml"
    # --fail-on-warn turns any drf-spectacular warning or error into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    paths = schema["paths"]
    assert set(paths["/api/v1/virtualmachines/isos"]) == {"get", "post"}
    assert set(paths["/api/v1/virtualmachines/isos/{iso_id}"]) == {"get", "patch", "delete"}
    assert "post" in paths["/api/v1/virtualmachines/isos/{iso_id}/cancel"]
    assert schema["components"]["securitySchemes"].keys() >= {"tokenAuth", "cookieAuth"}


@pytest.mark.django_db
def test_swagger_ui_is_served(admin_client) -> None:
    assert admin_client.get("/api/docs/").status_code == 200
    assert admin_client.get("/api/schema/").status_code == 200
