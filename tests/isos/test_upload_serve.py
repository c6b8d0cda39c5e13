"""Issue 14's upload proof against the production server (`manage.py serve`): a 1 GiB upload cut half-way
(the connection dropped mid-chunk, then the server restarted, so the hash state is gone too), resumed from
the offset the server reports, ends as a READY ISO with hashlib's digests.

The file is generated, never held whole: a small real ISO followed by 1 MiB blocks that differ from each
other, produced by a generator for the upload and for hashlib alike.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.isos import make_iso
from tests.support.serving import ADMIN_USER, manage, prepare_data_dir, serve_env, start_serve

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 1024 * MIB
CHUNK = 64 * MIB
UPLOADS = "/api/v1/virtualmachines/isos/uploads"


class Source:
    """SIZE bytes: `head` (a real ISO), then 1 MiB blocks numbered in their first 8 bytes."""

    def __init__(self, head: bytes) -> None:
        self.head = head + bytes(MIB - len(head) % MIB if len(head) % MIB else 0)
        self.filler = bytes(range(256)) * (MIB // 256)

    def block(self, index: int) -> bytes:
        start = index * MIB
        if start < len(self.head):
            return self.head[start : start + MIB]
        return index.to_bytes(8, "little") + self.filler[8:]

    def chunks(self, first: int, last: int) -> Iterator[bytes]:
        """Bytes first..last (inclusive), block-aligned `first`, in pieces of at most 1 MiB."""
        assert first % MIB == 0
        index, remaining = first // MIB, last - first + 1
        while remaining > 0:
            block = self.block(index)[:remaining]
            yield block
            remaining -= len(block)
            index += 1


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=120)


def call(port: int, token: str, method: str, path: str, body: str | Iterator[bytes] | None = None, headers: dict[str, str] | None = None):
    connection = connect(port)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Token {token}", **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        return response, (json.loads(data) if data else {})
    finally:
        connection.close()


def put_chunk(port: int, token: str, upload_id: str, source: Source, first: int):
    last = min(first + CHUNK, SIZE) - 1
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"bytes {first}-{last}/{SIZE}",
        "Content-Length": str(last - first + 1),
    }
    return call(port, token, "PUT", f"{UPLOADS}/{upload_id}", source.chunks(first, last), headers)


def cut_mid_chunk(port: int, token: str, upload_id: str, source: Source, first: int, sent: int) -> None:
    """Send a chunk's headers and `sent` of its bytes, then drop the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            f"PUT {UPLOADS}/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Range: bytes {first}-{first + CHUNK - 1}/{SIZE}\r\n"
            f"Content-Length: {CHUNK}\r\n\r\n"
        )
        sock.sendall(head.encode())
        for block in source.chunks(first, first + sent - 1):
            sock.sendall(block)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # a reset, as a network cut


def test_a_1_gib_upload_cut_half_way_and_resumed_ends_with_hashlibs_digests(tmp_path: Path):
    data_dir, isos = tmp_path / "data", tmp_path / "isos"
    isos.mkdir()
    prepare_data_dir(data_dir)
    env = {"VAPOR_ISO_DIRS": str(isos), "VAPOR_ISO_DOWNLOAD_DIR": str(isos)}
    made = manage(
        serve_env(data_dir, **env),
        "shell",
        "-c",
        f"from rest_framework.authtoken.models import Token; print(Token.objects.create(user_id=__import__('django.contrib.auth.models', "
        f"fromlist=['User']).User.objects.get(username={ADMIN_USER!r}).pk).key)",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    source = Source(make_iso(tmp_path / "head.iso", label="BIG UPLOAD", boot="bios").read_bytes())
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    for block in source.chunks(0, SIZE - 1):
        md5.update(block)
        sha256.update(block)

    half = SIZE // 2
    with start_serve(data_dir, tmp_path / "serve-1.log", **env) as served:
        response, body = call(
            served.port, token, "POST", UPLOADS, json.dumps({"filename": "big.iso", "size": SIZE}), {"Content-Type": "application/json"}
        )
        assert response.status == 201, body
        upload_id = body["id"]
        for first in range(0, half, CHUNK):
            response, body = put_chunk(served.port, token, upload_id, source, first)
            assert (response.status, body["offset"]) == (200, first + CHUNK), body
        cut_mid_chunk(served.port, token, upload_id, source, half, 5 * MIB)
    # The server is gone with the hash state; a new one takes over from what is on disk.
    with start_serve(data_dir, tmp_path / "serve-2.log", **env) as served:
        response, body = call(served.port, token, "HEAD", f"{UPLOADS}/{upload_id}")
        assert response.status == 200
        offset = int(response.getheader("Upload-Offset"))
        assert offset == half  # the cut chunk never reached the view: nothing of it counts
        response, body = put_chunk(served.port, token, upload_id, source, 0)
        assert (response.status, body["code"], body["offset"]) == (409, "offset_mismatch", half)
        for first in range(offset, SIZE, CHUNK):
            response, body = put_chunk(served.port, token, upload_id, source, first)
            assert response.status == (201 if first + CHUNK >= SIZE else 200), body
        iso_id = body["iso"]
        response, iso = call(served.port, token, "GET", f"/api/v1/virtualmachines/isos/{iso_id}")
        assert response.status == 200
        log = served.output()
    assert (iso["status"], iso["size"], iso["volume_label"]) == ("ready", SIZE, "BIG UPLOAD")
    assert (iso["md5_hash"], iso["sha256_hash"]) == (md5.hexdigest(), sha256.hexdigest())
    assert iso["path"] == str(isos / "big.iso")
    assert sorted(p.name for p in isos.iterdir()) == ["big.iso"]  # no part file left
    assert f"upload {upload_id}: no hash state in this process, hashing its first {half} bytes again" in log
    assert f"uploaded {upload_id}" in log
