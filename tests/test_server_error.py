"""An unexpected exception in an API view answers the JSON error shape, never Django's debug page."""

from __future__ import annotations

import logging

import pytest

from isos import services
from tests.support.isos import make_iso, register_ready

pytestmark = pytest.mark.django_db

SECRET = "secret-detail-9f3e: /var/lib/vapor/private"


@pytest.mark.parametrize("debug", [True, False], ids=["DEBUG on", "DEBUG off"])
@pytest.mark.parametrize("error", [OverflowError, RuntimeError])
def test_an_unexpected_exception_is_a_json_500_without_its_text(api, iso_dirs, settings, monkeypatch, caplog, debug, error):
    settings.DEBUG = debug
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))

    def fail(**kwargs: object) -> None:
        raise error(SECRET)

    monkeypatch.setattr(services, "iso_delete", fail)
    api.raise_request_exception = False  # answer as a server would, not re-raise into the test
    with caplog.at_level(logging.ERROR, logger="vapor"):
        response = api.delete(f"/api/v1/virtualmachines/isos/{iso.pk}")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == "server_error"
    assert set(body) == {"detail", "code"}
    text = response.content.decode()
    assert SECRET not in text and "Traceback" not in text and error.__name__ not in text
    # The traceback is in the log, under the reference the client was given.
    record = next(r for r in caplog.records if r.name.startswith("vapor") and r.exc_info)
    assert record.exc_info[0] is error and SECRET in str(record.exc_info[1])
    assert f"reference {record.getMessage().split()[2]})" in body["detail"]
