"""ISO upload in chunks (issue 14, point 5): the API, the service's rules, the janitor."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.http.request import HttpRequest
from django.utils import timezone
from rest_framework.test import APIClient

from isos import uploads
from isos.models import IsoImage, IsoUpload
from isos.services import iso_cleanup
from tests.support.isos import make_iso, make_non_iso

URL = "/api/v1/virtualmachines/isos/uploads"

pytestmark = pytest.mark.django_db


@pytest.fixture
def iso_bytes(iso_dirs, tmp_path: Path) -> bytes:
    """A real ISO (hybrid boot, label UPLOADED) padded to a size that is not a multiple of any chunk."""
    return make_iso(iso_dirs.outside / "source.iso", label="Debian 12 UPLOAD", boot="hybrid", size_padding=300_001).read_bytes()


def start(api: APIClient, size: int, **extra: object):
    return api.post(URL, {"filename": "debian-12.iso", "size": size, **extra}, format="json")


def put(api: APIClient, upload_id: str, data: bytes, first: int, size: int):
    last = first + len(data) - 1
    return api.put(
        f"{URL}/{upload_id}", data=data, content_type="application/octet-stream", HTTP_CONTENT_RANGE=f"bytes {first}-{last}/{size}"
    )


def send_all(api: APIClient, upload_id: str, data: bytes, chunk: int, first: int = 0):
    response = None
    for offset in range(first, len(data), chunk):
        response = put(api, upload_id, data[offset : offset + chunk], offset, len(data))
        assert response.status_code in (200, 201), response.json()
        assert response.json()["offset"] == min(offset + chunk, len(data))
    return response


def download_dir() -> Path:
    return settings.VAPOR.download_dir


def leftovers() -> list[str]:
    return sorted(p.name for p in download_dir().iterdir())


def test_chunks_in_order_make_a_ready_iso_with_hashlibs_digests(api, iso_bytes):
    created = start(api, len(iso_bytes), tags=["debian"], description="from my laptop")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["offset"], body["size"], body["iso"], body["filename"]) == (0, len(iso_bytes), None, "debian-12.iso")
    assert created["Location"] == f"http://testserver{URL}/{body['id']}"
    assert created["Upload-Offset"] == "0"

    last = send_all(api, body["id"], iso_bytes, 256 * 1024)
    assert last.status_code == 201
    iso = IsoImage.objects.get(pk=last.json()["iso"])
    assert last["Location"] == f"http://testserver/api/v1/virtualmachines/isos/{iso.pk}"
    assert iso.status == "ready"
    assert (iso.md5_hash, iso.sha256_hash) == (hashlib.md5(iso_bytes).hexdigest(), hashlib.sha256(iso_bytes).hexdigest())
    assert (iso.size, iso.bytes_done, iso.bytes_total) == (len(iso_bytes),) * 3
    assert (iso.name, iso.volume_label, iso.boot_type, iso.description) == ("debian-12.iso", "Debian 12 UPLOAD", "hybrid", "from my laptop")
    assert iso.os_type == "linux" and iso.downloaded and iso.source_url == ""
    assert [t.name for t in iso.tags.all()] == ["debian"]
    assert Path(iso.path) == download_dir() / "debian-12.iso"
    assert Path(iso.path).read_bytes() == iso_bytes
    assert leftovers() == ["debian-12.iso"]  # no part file
    assert not IsoUpload.objects.exists()
    assert api.get(f"{URL}/{body['id']}").status_code == 404  # the upload is over


def test_a_chunk_at_the_wrong_offset_is_a_409_telling_the_offset(api, iso_bytes):
    upload_id = start(api, len(iso_bytes)).json()["id"]
    assert put(api, upload_id, iso_bytes[:50_000], 0, len(iso_bytes)).status_code == 200
    for first in (0, 40_000, 60_000):
        response = put(api, upload_id, iso_bytes[first : first + 1000], first, len(iso_bytes))
        assert response.status_code == 409
        assert (response.json()["code"], response.json()["offset"]) == ("offset_mismatch", 50_000)
    assert IsoUpload.objects.get(pk=upload_id).part_path.stat().st_size == 50_000
    head = api.head(f"{URL}/{upload_id}")
    assert (head.status_code, head["Upload-Offset"]) == (200, "50000")


class CutStream:
    """A request body that stops after `cut` bytes, as a dropped connection does."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut, self.at = data, cut, 0

    def read(self, size: int) -> bytes:
        block = self.data[self.at : min(self.at + size, self.cut)]
        self.at += len(block)
        return block


@pytest.mark.parametrize("same_process", [True, False], ids=["hash-state-kept", "rehashed-in-another-process"])
def test_resume_after_a_cut_ends_with_hashlibs_digests(api, iso_bytes, same_process):
    upload = IsoUpload.objects.get(pk=start(api, len(iso_bytes)).json()["id"])
    cut = len(iso_bytes) // 2 + 12_345
    with pytest.raises(uploads.InvalidInput) as refused:
        uploads.iso_upload_append(upload=upload, start=0, count=len(iso_bytes), size=len(iso_bytes), stream=CutStream(iso_bytes, cut))
    assert refused.value.extra["offset"] == cut
    status = api.get(f"{URL}/{upload.pk}").json()
    assert status["offset"] == cut  # what arrived is kept: the client resumes from there
    rehashes = uploads.rehashes
    if not same_process:
        uploads._HASH_STATES.clear()  # the next chunk lands in a process that never saw this upload
    last = send_all(api, upload.pk, iso_bytes, 1024 * 1024, first=cut)
    assert uploads.rehashes == rehashes + (0 if same_process else 1)
    iso = IsoImage.objects.get(pk=last.json()["iso"])
    assert (iso.md5_hash, iso.sha256_hash) == (hashlib.md5(iso_bytes).hexdigest(), hashlib.sha256(iso_bytes).hexdigest())


class CountingStream:
    """A body read only in pieces of at most READ_SIZE, counting them."""

    def __init__(self, size: int) -> None:
        self.size, self.at = size, 0
        self.reads: list[int] = []

    def read(self, size: int) -> bytes:
        assert 0 < size <= uploads.READ_SIZE, f"read({size}) asks for more than READ_SIZE at once"
        self.reads.append(size)
        block = bytes(min(size, self.size - self.at))
        self.at += len(block)
        return block


def test_the_body_is_read_in_bounded_pieces_never_whole(api, iso_dirs, monkeypatch):
    iso_bytes = make_iso(iso_dirs.outside / "big.iso", size_padding=12 * 1024 * 1024).read_bytes()
    # Through the API: the Django request's stream is read in pieces of READ_SIZE; request.body is never built.
    monkeypatch.setattr(uploads, "READ_SIZE", 64 * 1024)
    reads: list[int] = []
    original = HttpRequest.read

    def spy(self: HttpRequest, *args: int) -> bytes:
        reads.append(args[0] if args else -1)
        return original(self, *args)

    monkeypatch.setattr(HttpRequest, "read", spy)
    upload_id = start(api, len(iso_bytes)).json()["id"]
    reads.clear()  # the POST's JSON went through the bounded parser; the chunk is what counts
    chunk = 1024 * 1024
    assert put(api, upload_id, iso_bytes[:chunk], 0, len(iso_bytes)).status_code == 200
    assert reads and all(0 < n <= 64 * 1024 for n in reads), reads
    assert len(reads) >= chunk // (64 * 1024)

    # The service alone, with a body far larger than a read.
    upload = IsoUpload.objects.get(pk=upload_id)
    stream = CountingStream(8 * 1024 * 1024)
    uploads.iso_upload_append(upload=upload, start=chunk, count=stream.size, size=len(iso_bytes), stream=stream)
    assert len(stream.reads) == stream.size // (64 * 1024)


def test_a_size_over_the_iso_limit_is_a_400_naming_size(api, iso_dirs):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_max_bytes=10 * 1024**2)
    response = start(api, 10 * 1024**2 + 1)
    assert response.status_code == 400
    assert response.json()["field"] == "size"
    assert "VAPOR_DOWNLOAD_MAX_BYTES" in response.json()["detail"]
    assert start(api, 1000).json()["field"] == "size"  # too small to hold an ISO volume descriptor
    assert not IsoUpload.objects.exists()


def test_a_chunk_larger_than_allowed_or_disagreeing_with_its_body_is_a_400(api, iso_bytes):
    upload_id = start(api, len(iso_bytes)).json()["id"]
    url = f"{URL}/{upload_id}"
    for header in ("bytes 0-99", "bytes=0-99/100", f"bytes 0-{uploads.MAX_CHUNK}/{len(iso_bytes)}", "bytes 9-1/100"):
        response = api.put(url, data=b"x" * 100, content_type="application/octet-stream", HTTP_CONTENT_RANGE=header)
        assert (response.status_code, response.json()["field"]) == (400, "Content-Range"), header
    response = api.put(url, data=b"x" * 99, content_type="application/octet-stream", HTTP_CONTENT_RANGE=f"bytes 0-99/{len(iso_bytes)}")
    assert response.status_code == 400 and "Content-Length" in response.json()["detail"]
    response = put(api, upload_id, b"x" * 100, 0, len(iso_bytes) + 1)
    assert response.status_code == 400 and "started for" in response.json()["detail"]
    assert IsoUpload.objects.get(pk=upload_id).offset == 0


def test_non_iso_content_is_refused_with_nothing_left(api, iso_dirs):
    data = make_non_iso(iso_dirs.outside / "junk.iso", os.urandom(200_000)).read_bytes()
    upload_id = start(api, len(data)).json()["id"]
    put(api, upload_id, data[:100_000], 0, len(data))
    response = put(api, upload_id, data[100_000:], 100_000, len(data))
    assert response.status_code == 400
    assert (response.json()["field"], response.json()["code"]) == ("file", "not_iso_image")
    assert leftovers() == [] and not IsoUpload.objects.exists() and not IsoImage.objects.exists()


def test_a_wrong_sha256_is_refused_with_nothing_left(api, iso_bytes):
    upload_id = start(api, len(iso_bytes), sha256="ab" * 32).json()["id"]
    response = send_all_expecting_failure(api, upload_id, iso_bytes)
    assert (response.status_code, response.json()["field"]) == (400, "sha256")
    assert leftovers() == [] and not IsoUpload.objects.exists() and not IsoImage.objects.exists()
    assert start(api, len(iso_bytes), sha256="not-hex").json()["field"] == "sha256"


def send_all_expecting_failure(api: APIClient, upload_id: str, data: bytes):
    put(api, upload_id, data[:-10], 0, len(data))
    return put(api, upload_id, data[-10:], len(data) - 10, len(data))


def test_name_and_file_clashes(api, iso_bytes, iso_dirs):
    make_iso(download_dir() / "taken.iso", label="TAKEN")
    response = start(api, len(iso_bytes), filename="taken.iso")
    assert (response.status_code, response.json()["field"], response.json()["code"]) == (409, "filename", "file_exists")
    IsoImage.objects.create(id="iso-0123456789ab", name="Debian", path="/x/debian.iso")
    response = start(api, len(iso_bytes), name="Debian")
    assert (response.status_code, response.json()["field"]) == (409, "name")
    first = start(api, len(iso_bytes))
    assert first.status_code == 201
    again = start(api, len(iso_bytes))
    assert (again.status_code, again.json()["code"]) == (409, "upload_in_progress")

    # A file of the same name appearing on the host during the upload is never overwritten.
    (download_dir() / "debian-12.iso").write_bytes(b"the operator's own file")
    response = send_all_expecting_failure(api, first.json()["id"], iso_bytes)
    assert (response.status_code, response.json()["code"]) == (409, "file_exists")
    assert (download_dir() / "debian-12.iso").read_bytes() == b"the operator's own file"
    assert leftovers() == ["debian-12.iso", "taken.iso"] and not IsoUpload.objects.exists()


def test_uploading_needs_the_add_permission_and_an_upload_is_its_owners(api, viewer_api, iso_bytes, db):
    assert start(viewer_api, len(iso_bytes)).status_code == 403
    upload_id = start(api, len(iso_bytes)).json()["id"]
    assert viewer_api.get(f"{URL}/{upload_id}").status_code == 403
    from django.contrib.auth.models import Permission, User

    other = User.objects.create_user("other-operator")
    other.user_permissions.set(Permission.objects.filter(codename="add_isoimage"))
    client = APIClient()
    client.force_authenticate(other)
    assert client.get(f"{URL}/{upload_id}").status_code == 404
    assert put(client, upload_id, iso_bytes[:10], 0, len(iso_bytes)).status_code == 404
    assert client.delete(f"{URL}/{upload_id}").status_code == 404
    assert IsoUpload.objects.filter(pk=upload_id).exists()


def test_cancel_removes_the_partial_file(api, iso_bytes):
    upload_id = start(api, len(iso_bytes)).json()["id"]
    put(api, upload_id, iso_bytes[:70_000], 0, len(iso_bytes))
    assert len(leftovers()) == 1 and leftovers()[0].endswith(".part")
    assert api.delete(f"{URL}/{upload_id}").status_code == 204
    assert leftovers() == [] and not IsoUpload.objects.exists()
    assert put(api, upload_id, iso_bytes[70_000:80_000], 70_000, len(iso_bytes)).status_code == 404


def test_a_second_writer_of_the_same_upload_is_a_409(api, iso_bytes):
    upload_id = start(api, len(iso_bytes)).json()["id"]
    put(api, upload_id, iso_bytes[:1000], 0, len(iso_bytes))
    part = IsoUpload.objects.get(pk=upload_id).part_path
    with open(part, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another request is writing it
        response = put(api, upload_id, iso_bytes[1000:2000], 1000, len(iso_bytes))
        assert (response.status_code, response.json()["code"]) == (409, "upload_busy")
        assert api.delete(f"{URL}/{upload_id}").status_code == 409
    assert part.stat().st_size == 1000


def test_the_janitor_removes_abandoned_uploads_and_keeps_open_ones(api, iso_bytes):
    old = start(api, len(iso_bytes)).json()["id"]
    put(api, old, iso_bytes[:5000], 0, len(iso_bytes))
    fresh = start(api, len(iso_bytes), filename="other.iso").json()["id"]
    put(api, fresh, iso_bytes[:5000], 0, len(iso_bytes))
    IsoUpload.objects.filter(pk=old).update(updated_at=timezone.now() - timedelta(hours=25))
    old_part = download_dir() / f".debian-12.iso.{old}.part"
    _, removed = iso_cleanup(stale_after=timedelta(minutes=30))
    assert removed == [old_part]
    assert list(IsoUpload.objects.values_list("pk", flat=True)) == [fresh]
    assert leftovers() == [f".other.iso.{fresh}.part"]


class FailingWrite:
    """os.pwrite that writes half of the first piece it is given after `after` bytes, then fails (a full disk)."""

    def __init__(self, after: int) -> None:
        self.after, self.total = after, 0
        self.original = os.pwrite

    def __call__(self, fd: int, data: memoryview, offset: int) -> int:
        if self.total >= self.after:
            self.original(fd, data[: len(data) // 2], offset)
            raise OSError(28, "No space left on device")
        done = self.original(fd, data, offset)
        self.total += done
        return done


def test_the_offset_is_the_part_files_size_without_a_row_write_per_chunk(api, iso_bytes, monkeypatch):
    monkeypatch.setattr(uploads, "READ_SIZE", 16 * 1024)
    upload_id = start(api, len(iso_bytes)).json()["id"]
    put(api, upload_id, iso_bytes[:100_000], 0, len(iso_bytes))
    put(api, upload_id, iso_bytes[100_000:200_000], 100_000, len(iso_bytes))
    assert IsoUpload.objects.get(pk=upload_id).offset == 0  # the row was written when the upload started, not per chunk
    uploads._HASH_STATES.clear()  # a restart of the server: only the file and the row are left
    assert api.get(f"{URL}/{upload_id}").json()["offset"] == 200_000
    assert api.head(f"{URL}/{upload_id}")["Upload-Offset"] == "200000"

    # A write that fails half-way keeps the bytes on disk; the next chunk continues after them, hashing the file
    # again since the hashes never saw the half-written piece.
    monkeypatch.setattr(uploads.os, "pwrite", FailingWrite(after=50_000))
    assert put(api, upload_id, iso_bytes[200_000:400_000], 200_000, len(iso_bytes)).status_code == 500
    monkeypatch.undo()
    offset = api.get(f"{URL}/{upload_id}").json()["offset"]
    assert 250_000 < offset < 400_000
    rehashes = uploads.rehashes
    last = send_all(api, upload_id, iso_bytes, 1024 * 1024, first=offset)
    assert uploads.rehashes == rehashes + 1
    iso = IsoImage.objects.get(pk=last.json()["iso"])
    assert (iso.md5_hash, iso.sha256_hash) == (hashlib.md5(iso_bytes).hexdigest(), hashlib.sha256(iso_bytes).hexdigest())


def test_the_row_is_refreshed_for_the_janitor_at_most_every_few_seconds(api, iso_bytes, monkeypatch):
    upload_id = start(api, len(iso_bytes)).json()["id"]
    IsoUpload.objects.filter(pk=upload_id).update(updated_at=timezone.now() - timedelta(seconds=uploads.ROW_REFRESH_SECONDS + 1))
    put(api, upload_id, iso_bytes[:70_000], 0, len(iso_bytes))
    row = IsoUpload.objects.get(pk=upload_id)
    assert row.offset == 70_000 and timezone.now() - row.updated_at < timedelta(seconds=uploads.ROW_REFRESH_SECONDS)
