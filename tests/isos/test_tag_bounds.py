"""How many tags one ISO may have (issue 11, point 4): at most MAX_TAGS, each at most
64 characters; past that a 400 naming `tags` from every entry point, nothing written."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from isos.models import IsoImage, IsoTag
from isos.services import MAX_TAGS
from tests.support.isos import make_iso, register_ready

pytestmark = pytest.mark.django_db
URL = "/api/v1/virtualmachines/isos"
TOO_MANY = [f"t{i}" for i in range(MAX_TAGS + 1)]


def refused_on_tags(response, *words: str) -> None:
    body = response.json()
    assert (response.status_code, body["field"]) == (400, "tags"), body
    for word in words:
        assert word in body["detail"], body


def test_the_limit_is_fifty_tags():
    assert MAX_TAGS == 50


def test_registering_with_too_many_or_too_long_tags_is_400_on_tags(api, iso_dirs):
    iso = make_iso(iso_dirs.search[0] / "a.iso")
    refused_on_tags(api.post(URL, {"path": str(iso), "tags": TOO_MANY}, format="json"), "50")
    response = api.post(URL, {"path": str(iso), "tags": ["x" * 65]}, format="json")
    assert (response.status_code, response.json()["field"]) == (400, "tags.0") and "64" in response.json()["detail"]
    assert not IsoImage.objects.exists() and not IsoTag.objects.exists()
    response = api.post(URL, {"path": str(iso), "tags": TOO_MANY[:MAX_TAGS]}, format="json")
    assert response.status_code == 201, response.json()
    assert len(response.json()["tags"]) == MAX_TAGS


def test_editing_with_too_many_tags_is_400_and_keeps_the_old_ones(api, iso_dirs):
    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"), tags=("ubuntu",))
    refused_on_tags(api.patch(f"{URL}/{iso.pk}", {"tags": TOO_MANY}, format="json"), "50")
    assert [t.name for t in iso.tags.all()] == ["ubuntu"]


def test_the_service_holds_the_limit_for_the_admin_and_the_command(admin_client, iso_dirs):
    path = make_iso(iso_dirs.search[0] / "win.iso")
    response = admin_client.post("/admin/isos/isoimage/add/", {"path": str(path), "tag_names": ", ".join(TOO_MANY)})
    assert response.status_code == 200
    assert f"at most {MAX_TAGS} tags per ISO; {MAX_TAGS + 1} given" in response.content.decode()
    out, err = StringIO(), StringIO()
    args = [arg for tag in TOO_MANY for arg in ("--tag", tag)]
    with pytest.raises(CommandError, match="1 file"):
        call_command("register_isos", str(iso_dirs.search[0]), *args, stdout=out, stderr=err)
    assert f"failed {path}: at most {MAX_TAGS} tags per ISO" in err.getvalue()
    assert not IsoImage.objects.exists() and not IsoTag.objects.exists()
