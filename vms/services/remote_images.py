"""Existing disks and clone sources on a remote host (issue 15, point 4), checked through libvirt's storage API.

On the portal's own host the checks open the files (`vms.services.validation._inspect_source`:
path guard, `qemu-img info` of the chain, `qemu-img check`). A remote host's
files are not the portal's, so there the same rules are asked of the host's
libvirt:

- path guard: the image, and every file of its chain, must be a volume of a
  file pool (dir, fs, netfs) on the host, found by its exact path (libvirt's
  lookup by path: no symlink is followed to somewhere else, nothing outside
  the pools is reachable), and a plain absolute name (no protocol such as
  json: or nbd:);
- format: the stated format is what the image is opened with; a stated
  qcow2 must carry qcow2's magic (a raw file is read as raw, whatever its
  first bytes say);
- backing chain: read from each qcow2 header (the first bytes, downloaded
  through libvirt's stream, `vms.hypervisor.image_header`); a backing file
  must state its format; relative names resolve against the image's
  directory; at most MAX_CHAIN_DEPTH images, no loops;
- data file: an external data file is refused on a remote host (its
  ownership and location cannot be proven through the storage API).

Not done remotely (it needs the file opened by qemu-img): the full consistency
check of a qcow2 (`qemu-img check`); what stands in for it is that the L1 and
refcount tables the header places lie inside the file (a truncated image). The result has the shape the local
check gives (`ImageInfo` with its chain), so the recorded chain and the
worker's re-check (`source_recheck`) work the same for both.
"""

from __future__ import annotations

import posixpath

from vaporsite.errors import InvalidInput, NotFound
from vaporsite.paths import absolute_path
from vms.hypervisor import Hypervisor
from vms.hypervisor.image_header import HEAD_BYTES, parse_qcow2
from vms.hypervisor.images import MAX_CHAIN_DEPTH, ChainLink, ImageInfo, has_protocol
from vms.hypervisor.specs import IMAGE_FORMATS

PATH_MAX, NAME_MAX = 4096, 255  # Linux's limits: longer names are no file on the host


def _pool_volume(hv: Hypervisor, name: str, *, field: str, what: str, top: bool) -> int:
    """The capacity of the volume at `name`, which must be a file in a file pool of the host."""
    if has_protocol(name) or not name.startswith("/"):
        raise InvalidInput(f"{what} is not a plain absolute file name", field=field)
    if posixpath.normpath(name) != name:
        raise InvalidInput(f"{what} is not a plain absolute file name (no . or .. or //)", field=field)
    if len(name.encode()) >= PATH_MAX or any(len(part.encode()) > NAME_MAX for part in name.split("/")):
        raise InvalidInput(f"{what} is longer than a file name on the host may be ({PATH_MAX} bytes, {NAME_MAX} a part)", field=field)
    directories = set(hv.pool_paths().values())
    volume = hv.volume_by_path(name)
    if volume is None or posixpath.dirname(name) not in directories:
        allowed = ", ".join(sorted(directories)) or "(none)"
        message = f"{what} is no volume of a storage pool on the host (pool directories: {allowed})"
        if top:
            raise NotFound(message, field=field, code="path_outside_roots")
        raise InvalidInput(message, field=field, code="path_outside_roots")
    return volume.capacity


def inspect_remote_source(raw: str, fmt: str, field: str, hv: Hypervisor) -> tuple[str, ImageInfo]:
    """`raw`'s image on the remote host `hv`, checked as above: its path and `ImageInfo` (chain top first)."""
    absolute_path(raw, field=field, note=" (protocol names such as json: or nbd: are refused)")
    links: list[ChainLink] = []
    seen: set[str] = set()
    name, image_format, parent = raw, fmt, None
    top_capacity = 0
    while True:
        what = f"the backing file {name} of {parent}" if parent else name
        if image_format not in IMAGE_FORMATS:
            raise InvalidInput(f"{what} has the format {image_format!r}, which Vapor does not open", field=field)
        if name in seen or len(links) >= MAX_CHAIN_DEPTH:
            raise InvalidInput(f"the backing chain of {raw} loops or is deeper than {MAX_CHAIN_DEPTH} images", field=field)
        seen.add(name)
        capacity = _pool_volume(hv, name, field=field, what=what, top=parent is None)
        if image_format != "qcow2":
            links.append(ChainLink(name, image_format, capacity, None, None, None, None))
            top_capacity = top_capacity or capacity
            break
        header = parse_qcow2(hv.read_volume(name, 0, HEAD_BYTES), what=what, field=field)
        for table, offset, size in header.tables:
            # What `qemu-img check` would find first in a truncated image, asked of the host: is the table's last byte there?
            if size and len(hv.read_volume(name, offset + size - 1, 1)) != 1:
                raise InvalidInput(
                    f"{what} is a damaged qcow2 image: its {table} lies past the end of the file", field=field, code="image_damaged"
                )
        if header.data_file is not None:
            raise InvalidInput(
                f"{what} keeps its data in the external file {header.data_file}, which Vapor does not accept on a remote host",
                field=field,
                code="data_file_refused",
            )
        backing_path = None
        if header.backing_file is not None:
            if header.backing_format is None:
                raise InvalidInput(f"{what} names the backing file {header.backing_file} without its format", field=field)
            backing = header.backing_file
            backing_path = backing if backing.startswith("/") or has_protocol(backing) else posixpath.join(posixpath.dirname(name), backing)
        links.append(ChainLink(name, "qcow2", header.virtual_size, header.backing_file, header.backing_format, backing_path, None))
        top_capacity = top_capacity or header.virtual_size
        if backing_path is None:
            break
        parent, name, image_format = name, backing_path, str(header.backing_format)
    backing_files = tuple(link.path for link in links[1:])
    return raw, ImageInfo(raw, fmt, top_capacity, 0, backing_files, None, tuple(links))
