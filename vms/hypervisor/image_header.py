"""A qcow2 image's header read from its first bytes (issue 15, point 4): pure, no file access.

On a remote host Vapor cannot run qemu-img on a disk: it reads the image's
first bytes through libvirt's stream download (`read_volume`) and this
module says what they name: the virtual size, the backing file and its
format, an external data file. Anything it cannot read with certainty (a
header longer than what was read, a version it does not know, a backing
file without a stated format) is refused, never guessed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vaporsite.errors import InvalidInput

QCOW2_MAGIC = b"QFI\xfb"
HEAD_BYTES = 64 * 1024  # what is read: every header field and extension Vapor needs lies in the first cluster(s)
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
INCOMPAT_DATA_FILE = 1 << 2


@dataclass(frozen=True)
class Qcow2Header:
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    data_file: str | None  # the external data file the header names (None: the data is in the image)
    tables: tuple[tuple[str, int, int], ...] = ()  # (what, offset, bytes) of the L1 and refcount tables: in the file?


def is_qcow2(head: bytes) -> bool:
    return head[:4] == QCOW2_MAGIC


def parse_qcow2(head: bytes, *, what: str, field: str) -> Qcow2Header:
    """The header of the qcow2 image whose first bytes are `head`; InvalidInput naming `what` when unreadable."""

    def refuse(reason: str) -> InvalidInput:
        return InvalidInput(f"{what}: {reason}", field=field, code="image_unreadable")

    if not is_qcow2(head):
        raise InvalidInput(f"{what} is not in qcow2 format", field=field)
    if len(head) < 72:
        raise refuse("its qcow2 header is truncated")
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    (cluster_bits, virtual_size) = struct.unpack(">IQ", head[20:32])
    (l1_size, l1_offset, refcount_offset, refcount_clusters) = struct.unpack(">IQQI", head[36:60])
    if version not in (2, 3):
        raise refuse(f"qcow2 version {version} is not one Vapor reads")
    if not 9 <= cluster_bits <= 21:
        raise refuse(f"its cluster size 2^{cluster_bits} is not one QEMU writes")
    tables = (("L1 table", l1_offset, l1_size * 8), ("refcount table", refcount_offset, refcount_clusters << cluster_bits))
    incompatible, header_length = 0, 72
    if version == 3:
        if len(head) < 104:
            raise refuse("its qcow2 header is truncated")
        (incompatible,) = struct.unpack(">Q", head[72:80])
        (header_length,) = struct.unpack(">I", head[100:104])
    backing = None
    if backing_offset:
        if backing_size == 0 or backing_size > 1023 or backing_offset + backing_size > len(head):
            raise refuse("its backing file name lies outside what Vapor reads")
        backing = _text(head[backing_offset : backing_offset + backing_size], refuse)
    backing_format = data_file = None
    position = header_length
    while True:
        if position + 8 > len(head):
            raise refuse("its header extensions run past what Vapor reads")
        kind, length = struct.unpack(">II", head[position : position + 8])
        if kind == EXT_END:
            break
        body = head[position + 8 : position + 8 + length]
        if len(body) < length:
            raise refuse("its header extensions run past what Vapor reads")
        if kind == EXT_BACKING_FORMAT:
            backing_format = _text(body, refuse)
        elif kind == EXT_DATA_FILE:
            data_file = _text(body, refuse)
        position += 8 + (length + 7) // 8 * 8
    if incompatible & INCOMPAT_DATA_FILE and data_file is None:
        raise refuse("it keeps its data in an external file whose name it does not state")
    return Qcow2Header(virtual_size=virtual_size, backing_file=backing, backing_format=backing_format, data_file=data_file, tables=tables)


def _text(raw: bytes, refuse: object) -> str:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise refuse("it names a file that is not UTF-8") from None  # type: ignore[operator]
    if "\x00" in text:
        raise refuse("it names a file with a NUL byte")  # type: ignore[operator]
    return text
