"""The ISO library API: every endpoint, its successes and its errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from isos.models import IsoImage, RetiredIsoId
from tests.support.factories import VirtualMachineFactory
from tests.support.isos import make_iso, make_non_iso

URL = "/api/v1/virtualmachines/isos"
SPEC_FIELDS = {
    "id", "name", "path", "size", "os_type", "os_variant", "architecture", "boot_type", "description",
    "uploaded_at", "last_used", "use_count", "md5_hash", "sha256_hash", "tags",
}  # fmt: skip

pytestmark = pytest.mark.django_db


def register(api: APIClient, path: Path, run_tasks, **extra: object):
    with run_tasks():
        response = api.post(URL, {"path": str(path), **extra}, format="json")
    return response


# --- register by path ------------------------------------------------------


def test_register_path_hashes_in_background_and_becomes_ready(api, iso_dirs, run_tasks):
    iso_file = make_iso(iso_dirs.search[0] / "ubuntu-22.04-server-amd64.iso", label="Ubuntu-Server 22.04 LTS amd64", boot="hybrid")
    with run_tasks():
        response = api.post(URL, {"path": str(iso_file), "tags": ["ubuntu", "LTS"]}, format="json")
        assert response.status_code == 201, response.json()
        assert response.json()["status"] == "hashing"
    body = api.get(f"{URL}/{response.json()['id']}").json()
    data = iso_file.read_bytes()
    assert body["status"] == "ready"
    assert body["md5_hash"] == hashlib.md5(data).hexdigest()
    assert body["sha256_hash"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert body["name"] == "ubuntu-22.04-server-amd64.iso"
    assert (body["os_type"], body["os_variant"], body["architecture"]) == ("linux", "ubuntu22.04", "x86_64")
    assert body["boot_type"] == "hybrid"
    assert body["tags"] == ["lts", "ubuntu"]
    assert body["id"].startswith("iso-") and len(body["id"]) == 16
    assert response["Location"] == f"http://testserver{URL}/{body['id']}"


def test_caller_metadata_wins_over_the_guess(api, iso_dirs, run_tasks):
    iso_file = make_iso(iso_dirs.extra_root / "x.iso", label="Ubuntu-Server 22.04 LTS amd64")
    body = register(api, iso_file, run_tasks, name="custom", os_type="windows", os_variant="win11", description="d").json()
    assert (body["name"], body["os_type"], body["os_variant"], body["description"]) == ("custom", "windows", "win11", "d")


def test_symlink_inside_roots_is_registered_under_its_target(api, iso_dirs, run_tasks):
    target = make_iso(iso_dirs.search[1] / "real.iso")
    link = iso_dirs.search[0] / "link.iso"
    link.symlink_to(target)
    body = register(api, link, run_tasks).json()
    assert body["path"] == str(target)


@pytest.mark.parametrize(
    ("make_path", "status", "field", "words"),
    [
        (lambda d: Path("/etc/passwd"), 400, "path", "outside the allowed directories"),
        (lambda d: Path(f"{d.search[0]}/../elsewhere/x.iso"), 400, "path", "outside the allowed directories"),
        (lambda d: Path(f"{d.search[0]}2/x.iso"), 400, "path", "outside the allowed directories"),
        (lambda d: Path("/dev/null"), 400, "path", "outside the allowed directories"),
        (lambda d: d.search[0] / "missing.iso", 404, "path", "does not exist"),
        (lambda d: Path("relative/x.iso"), 400, "path", "not an absolute path"),
    ],
    ids=["etc-passwd", "dotdot-escape", "prefix-sibling", "device-outside", "missing", "relative"],
)
def test_bad_paths_are_refused(api, iso_dirs, make_path, status, field, words):
    response = api.post(URL, {"path": str(make_path(iso_dirs))}, format="json")
    assert response.status_code == status, response.json()
    assert response.json()["field"] == field
    assert words in response.json()["detail"]
    assert not IsoImage.objects.exists()


def test_symlink_leading_out_of_the_roots_is_refused(api, iso_dirs):
    outside = make_iso(iso_dirs.outside / "secret.iso")
    link = iso_dirs.search[0] / "innocent.iso"
    link.symlink_to(outside)
    response = api.post(URL, {"path": str(link)}, format="json")
    assert response.status_code == 400
    assert "outside the allowed directories" in response.json()["detail"]
    assert not IsoImage.objects.exists()


def test_device_node_inside_a_root_is_refused(api, iso_dirs):
    fifo = iso_dirs.search[0] / "pipe.iso"
    os.mkfifo(fifo)
    response = api.post(URL, {"path": str(fifo)}, format="json")
    assert response.status_code == 400
    assert "not a regular file" in response.json()["detail"]


def test_a_file_that_is_not_an_iso_is_refused_whatever_its_name(api, iso_dirs):
    fake = make_non_iso(iso_dirs.search[0] / "looks-like.iso", b"MZ" + b"\0" * 70000)
    response = api.post(URL, {"path": str(fake)}, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == "path"
    assert response.json()["code"] == "not_iso_image"
    assert not IsoImage.objects.exists()


def test_same_path_or_name_twice_is_a_conflict(api, iso_dirs, run_tasks):
    first = make_iso(iso_dirs.search[0] / "a.iso")
    other = make_iso(iso_dirs.search[0] / "b.iso")
    existing = register(api, first, run_tasks).json()
    again = api.post(URL, {"path": str(first)}, format="json")
    assert again.status_code == 409 and again.json()["field"] == "path"
    assert existing["id"] in again.json()["detail"]
    clash = api.post(URL, {"path": str(other), "name": "a.iso"}, format="json")
    assert clash.status_code == 409 and clash.json()["field"] == "name"
    assert IsoImage.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "path"),
        ({"path": "/x.iso", "url": "http://127.0.0.1/x.iso"}, "url"),
        ({"path": "/x.iso", "checksum": "md5:" + "0" * 32}, "checksum"),
        ({"path": "/x.iso", "os_type": "plan9"}, "os_type"),
        ({"path": "/x.iso", "architecture": "z80"}, "architecture"),
        ({"path": "/x.iso", "tags": "not-a-list"}, "tags"),
        ({"path": "/x.iso", "colour": "blue"}, "colour"),
        ({"url": "http://127.0.0.1/x.iso", "checksum": "sha1:abc"}, "checksum"),
    ],
)
def test_shape_errors_name_the_field(api, iso_dirs, payload, field):
    response = api.post(URL, payload, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == field
    assert not IsoImage.objects.exists()


def test_unknown_os_variant_is_refused_with_suggestions(api, iso_dirs):
    iso_file = make_iso(iso_dirs.search[0] / "a.iso")
    response = api.post(URL, {"path": str(iso_file), "os_variant": "ubuntu22"}, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == "os_variant"
    assert "ubuntu22.04" in response.json()["detail"]


def test_bad_tag_is_refused(api, iso_dirs):
    iso_file = make_iso(iso_dirs.search[0] / "a.iso")
    response = api.post(URL, {"path": str(iso_file), "tags": ["has space"]}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "tags"
    assert not IsoImage.objects.exists()


# --- list ------------------------------------------------------------------


def test_list_has_the_spec_shape_and_filters(api, iso_dirs, run_tasks):
    a = register(api, make_iso(iso_dirs.search[0] / "a.iso"), run_tasks, tags=["ubuntu", "lts"], os_type="linux").json()
    b = register(api, make_iso(iso_dirs.search[0] / "b.iso"), run_tasks, tags=["drivers"], os_type="windows", description="virtio").json()
    body = api.get(URL).json()
    assert set(body) == {"isos"}
    assert [i["id"] for i in body["isos"]] == [a["id"], b["id"]]
    assert set(body["isos"][0]) >= SPEC_FIELDS

    def ids(query: str) -> list[str]:
        response = api.get(URL + query)
        assert response.status_code == 200, response.json()
        return [i["id"] for i in response.json()["isos"]]

    assert ids("?tag=ubuntu") == [a["id"]]
    assert ids("?tag=ubuntu&tag=lts") == [a["id"]]
    assert ids("?tag=ubuntu&tag=drivers") == []
    assert ids("?os_type=windows") == [b["id"]]
    assert ids("?status=ready") == [a["id"], b["id"]]
    assert ids("?search=VIRTIO") == [b["id"]]
    assert ids("?architecture=aarch64") == []


def test_list_filter_with_a_bad_value_names_the_parameter(api, iso_dirs):
    response = api.get(URL + "?status=sleeping")
    assert response.status_code == 400 and response.json()["field"] == "status"


def test_list_query_count_does_not_grow_with_the_number_of_isos(api, iso_dirs, run_tasks):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for_list(expected_count: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert len(api.get(URL).json()["isos"]) == expected_count
        return len(captured.captured_queries)

    for index in range(2):
        register(api, make_iso(iso_dirs.search[0] / f"{index}.iso"), run_tasks, tags=[f"t{index}", "common"])
    few = queries_for_list(2)
    for index in range(2, 12):
        register(api, make_iso(iso_dirs.search[0] / f"{index}.iso"), run_tasks, tags=[f"t{index}", "common"])
    assert queries_for_list(12) == few <= 2


# --- detail, patch, delete -------------------------------------------------


def test_get_unknown_id_is_404(api, db):
    assert api.get(f"{URL}/iso-000000000000").status_code == 404


def test_patch_changes_metadata_only(api, iso_dirs, run_tasks):
    iso = register(api, make_iso(iso_dirs.search[0] / "a.iso"), run_tasks).json()
    response = api.patch(f"{URL}/{iso['id']}", {"name": "renamed", "tags": ["x"], "os_variant": "debian11"}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["name"], response.json()["tags"], response.json()["os_variant"]) == ("renamed", ["x"], "debian11")
    fixed = api.patch(f"{URL}/{iso['id']}", {"sha256_hash": "0" * 64}, format="json")
    assert fixed.status_code == 400 and fixed.json()["field"] == "sha256_hash"
    bad = api.patch(f"{URL}/{iso['id']}", {"os_variant": "nonsense"}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "os_variant"


def test_patch_to_a_taken_name_is_a_conflict(api, iso_dirs, run_tasks):
    register(api, make_iso(iso_dirs.search[0] / "a.iso"), run_tasks)
    b = register(api, make_iso(iso_dirs.search[0] / "b.iso"), run_tasks).json()
    response = api.patch(f"{URL}/{b['id']}", {"name": "a.iso"}, format="json")
    assert response.status_code == 409 and response.json()["field"] == "name"


def test_delete_keeps_a_registered_file_and_retires_the_id(api, iso_dirs, run_tasks):
    iso_file = make_iso(iso_dirs.search[0] / "a.iso")
    iso = register(api, iso_file, run_tasks).json()
    assert api.delete(f"{URL}/{iso['id']}").status_code == 204
    assert iso_file.exists()
    assert RetiredIsoId.objects.filter(pk=iso["id"]).exists()
    assert api.delete(f"{URL}/{iso['id']}").status_code == 404


def test_delete_while_a_vm_uses_it_is_a_conflict_naming_the_vms(api, iso_dirs, run_tasks):
    iso = register(api, make_iso(iso_dirs.search[0] / "a.iso"), run_tasks).json()
    for name in ("web-1", "db-1"):
        VirtualMachineFactory.create(name=name, cdrom=IsoImage.objects.get(pk=iso["id"]))
    response = api.delete(f"{URL}/{iso['id']}")
    assert response.status_code == 409
    assert response.json()["vms"] == ["db-1", "web-1"]
    assert "db-1, web-1" in response.json()["detail"]
    assert IsoImage.objects.filter(pk=iso["id"]).exists()


def test_cancel_of_a_ready_iso_is_a_conflict(api, iso_dirs, run_tasks):
    iso = register(api, make_iso(iso_dirs.search[0] / "a.iso"), run_tasks).json()
    response = api.post(f"{URL}/{iso['id']}/cancel")
    assert response.status_code == 409 and response.json()["code"] == "not_downloading"


def test_rehash_recomputes_after_the_file_changed(api, iso_dirs, run_tasks):
    iso_file = make_iso(iso_dirs.search[0] / "a.iso")
    iso = register(api, iso_file, run_tasks).json()
    with iso_file.open("ab") as stream:
        stream.write(b"\1" * 2048)
    with run_tasks():
        assert api.post(f"{URL}/{iso['id']}/rehash").json()["status"] == "hashing"
    after = api.get(f"{URL}/{iso['id']}").json()
    assert after["status"] == "ready"
    assert after["sha256_hash"] == hashlib.sha256(iso_file.read_bytes()).hexdigest() != iso["sha256_hash"]


# --- authentication and permissions -----------------------------------------


ENDPOINTS = [
    ("get", URL),
    ("post", URL),
    ("get", f"{URL}/iso-000000000000"),
    ("patch", f"{URL}/iso-000000000000"),
    ("delete", f"{URL}/iso-000000000000"),
    ("post", f"{URL}/iso-000000000000/cancel"),
    ("post", f"{URL}/iso-000000000000/retry"),
    ("post", f"{URL}/iso-000000000000/rehash"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_anonymous_is_401(anon_api, db, method, url):
    assert getattr(anon_api, method)(url, {}, format="json").status_code == 401


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_without_permission_is_403(nobody_api, method, url):
    assert getattr(nobody_api, method)(url, {}, format="json").status_code == 403


@pytest.mark.parametrize(("method", "url"), [e for e in ENDPOINTS if e[0] != "get"])
def test_view_permission_cannot_change_anything(viewer_api, method, url):
    assert getattr(viewer_api, method)(url, {}, format="json").status_code == 403


def test_viewer_can_list(viewer_api):
    assert viewer_api.get(URL).status_code == 200


def test_token_authentication_works(operator, db):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=operator)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get(URL).status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    assert client.get(URL).status_code == 401
