"""The authorization matrix for ISO uploads (issue 14, point 5): the chunked API and the admin upload page.

Uploading needs the permission to add an ISO, and an upload belongs to the
user who started it: every role (a superuser included) that is not its owner
meets a refusal that reveals nothing (401 anonymous, 403 without the
permission, 404 otherwise, as for an upload that never was), and leaves the
row, its offset and its part file exactly as they were. The owner's own
requests do what they do: start (201), status (GET, HEAD with
`Upload-Offset`), a chunk appended (200, the offset moves), cancel (204, the
part file gone). A session-authenticated start without the CSRF token is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from isos.models import IsoUpload
from tests.reliability.authz import changed_rows, make_role, record_allowed, rows
from tests.reliability.conftest import Tally
from tests.support.isos import make_iso

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "authorization"
URL = "/api/v1/virtualmachines/isos/uploads"
ROLES = ("anonymous", "viewer", "operator", "admin")
DENIED = {"anonymous": 401, "viewer": 403, "operator": 404, "admin": 404}  # another user's upload: as if it never was


@pytest.fixture
def iso_bytes(iso_dirs: Any) -> bytes:
    return make_iso(iso_dirs.outside / "authz-upload.iso", label="AUTHZ UPLOAD", size_padding=70_001).read_bytes()


def _api(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def _start(client: APIClient, size: int, filename: str = "authz.iso") -> Any:
    return client.post(URL, {"filename": filename, "size": size}, format="json")


def _put(client: APIClient, upload_id: str, data: bytes, first: int, size: int) -> Any:
    last = first + len(data) - 1
    return client.put(
        f"{URL}/{upload_id}", data=data, content_type="application/octet-stream", HTTP_CONTENT_RANGE=f"bytes {first}-{last}/{size}"
    )


def _digest(path: str | Path) -> str:
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else "absent"


def _owned_upload(iso_bytes: bytes) -> IsoUpload:
    """An upload started by another user (a superuser), its first chunk received."""
    owner = _api(User.objects.create_superuser("upload-owner", password=None))
    started = _start(owner, len(iso_bytes), "owned.iso")
    assert started.status_code == 201, started.content
    upload_id = started.json()["id"]
    assert _put(owner, upload_id, iso_bytes[:4096], 0, len(iso_bytes)).status_code == 200
    return IsoUpload.objects.get(pk=upload_id)


SOMEONE_ELSES = [
    ("GET", lambda c, u, data: c.get(f"{URL}/{u}")),
    ("HEAD", lambda c, u, data: c.head(f"{URL}/{u}")),
    ("PUT chunk", lambda c, u, data: _put(c, u, data[4096:8192], 4096, len(data))),
    ("PUT chunk at 0", lambda c, u, data: _put(c, u, data[:4096], 0, len(data))),
    ("DELETE", lambda c, u, data: c.delete(f"{URL}/{u}")),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("what", "send"), SOMEONE_ELSES, ids=[name for name, _ in SOMEONE_ELSES])
def test_someone_elses_upload_is_out_of_reach(role: str, what: str, send: Any, iso_bytes: bytes, tally: Tally) -> None:
    upload = _owned_upload(iso_bytes)
    client = _api(make_role(role))
    before_rows, before_part = rows(), _digest(upload.part_path)
    response = send(client, upload.pk, iso_bytes)
    leftovers = changed_rows(before_rows, rows()) + (_digest(upload.part_path) != before_part)
    refused = response.status_code == DENIED[role]
    tally.record(
        SUITE, f"{role} x API {what} another user's ISO upload", refused=refused, leftovers=leftovers, detail=f"{response.status_code}"
    )
    assert refused and leftovers == 0, (role, what, response.status_code, leftovers, response.content[:300])
    assert IsoUpload.objects.get(pk=upload.pk).owner.username == "upload-owner"


@pytest.mark.parametrize("role", ROLES)
def test_starting_and_using_an_upload_needs_the_add_permission(role: str, iso_bytes: bytes, tally: Tally) -> None:
    client = _api(make_role(role))
    before = rows()
    started = _start(client, len(iso_bytes))
    case = f"{role} x API upload an ISO (start, chunk, status, cancel)"
    if role in ("anonymous", "viewer"):
        refused = started.status_code == (401 if role == "anonymous" else 403)
        leftovers = changed_rows(before, rows())
        tally.record(SUITE, case, refused=refused, leftovers=leftovers, detail=f"{started.status_code}")
        assert refused and leftovers == 0, (role, started.status_code, started.content[:300])
        return
    problems: list[str] = []
    if started.status_code != 201:
        problems.append(f"start answered {started.status_code}")
    else:
        upload_id = started.json()["id"]
        upload = IsoUpload.objects.get(pk=upload_id)
        chunk = _put(client, upload_id, iso_bytes[:8192], 0, len(iso_bytes))
        if chunk.status_code != 200 or chunk.json()["offset"] != 8192:
            problems.append(f"the chunk answered {chunk.status_code} {chunk.content[:200]!r}")
        head = client.head(f"{URL}/{upload_id}")
        if head.status_code != 200 or head["Upload-Offset"] != "8192":
            problems.append(f"HEAD answered {head.status_code} {head.headers.get('Upload-Offset')}")
        cancelled = client.delete(f"{URL}/{upload_id}")
        if cancelled.status_code != 204 or IsoUpload.objects.filter(pk=upload_id).exists() or Path(upload.part_path).exists():
            problems.append(f"cancel answered {cancelled.status_code} and left the row or the part file")
    record_allowed(tally, SUITE, case, effect=not problems, detail="; ".join(problems) or "started, 8192 bytes appended, cancelled")
    assert not problems, (role, problems)


@pytest.mark.parametrize("role", ROLES)
def test_the_admin_upload_page_needs_the_add_permission(role: str, tally: Tally) -> None:
    user = make_role(role)
    client = Client()
    if user is not None:
        client.force_login(user)
    response = client.get("/admin/isos/isoimage/upload/")
    case = f"{role} x admin ISO upload page"
    if role in ("operator", "admin"):
        shown = response.status_code == 200 and 'id="vapor-upload"' in response.content.decode()
        record_allowed(tally, SUITE, case, effect=shown, detail=f"{response.status_code}")
        assert shown, (role, response.status_code)
        return
    if user is None:
        refused = response.status_code == 302 and response["Location"].startswith("/admin/login/")
    else:
        refused = response.status_code == 403
    tally.record(SUITE, case, refused=refused, detail=f"{response.status_code}")
    assert refused, (role, response.status_code)


def test_a_session_start_without_the_csrf_token_is_refused(iso_bytes: bytes, tally: Tally) -> None:
    client = Client(enforce_csrf_checks=True)
    user = make_role("operator")
    assert user is not None
    client.force_login(user)
    before = rows()
    response = client.post(URL, {"filename": "csrf.iso", "size": len(iso_bytes)}, content_type="application/json")
    leftovers = changed_rows(before, rows())
    refused = response.status_code == 403 and "CSRF" in response.content.decode()
    case = "session without CSRF token x API POST ISO upload"
    tally.record(SUITE, case, refused=refused, leftovers=leftovers, detail=f"{response.status_code}")
    assert refused and leftovers == 0, (response.status_code, response.content[:300])
