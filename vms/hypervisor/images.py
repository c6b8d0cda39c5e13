"""Disk images on the host, read and copied with `qemu-img` (no libvirt).

A disk image is a file-read vector: a qcow2 names a backing file and maybe
an external data file, and QEMU opens both when the guest starts. So a
user-supplied image is only accepted after reading its metadata here, with
three rules the backing-file CVEs taught (CVE-2008-2004, CVE-2024-32498,
CVE-2024-4467):

- the format is always stated (`-f`): never probed, so a "raw" file holding
  a qcow2 header stays raw and its header's backing file means nothing;
- the chain is walked one image at a time, and each backing file is checked
  *before* `qemu-img` opens it. `qemu-img info --backing-chain` would open the
  whole chain first, and was seen connecting to an `nbd:host:port` backing
  name on its own; a single-image `info` opens neither the backing file nor
  the data file;
- names QEMU would parse as a protocol (`json:{...}`, `nbd:...`), backing
  files without a recorded format, non-regular files (backing files and
  external data files alike: QEMU would read a device or a pipe as the
  disk) and, when `roots` are given, anything outside them are refused.

`qemu-img` runs with a time limit and is killed when it exceeds it: a
crafted image must not hold a request or a worker forever.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaporsite.errors import HypervisorError, InvalidInput, NotFound
from vaporsite.paths import absolute_path, is_inside
from vms.hypervisor.specs import IMAGE_FORMATS

QEMU_IMG = "qemu-img"
# Deeper chains are not something Vapor makes; a limit also stops a loop of
# images that name each other when symlinks defeat the loop check.
MAX_CHAIN_DEPTH = 16


@dataclass(frozen=True)
class ChainLink:
    """One image of a backing chain as its own header describes it.

    `backing_filename` is the name as recorded (possibly relative),
    `backing_path` the resolved absolute path QEMU would open.
    """

    path: str
    format: str
    virtual_size: int
    backing_filename: str | None
    backing_format: str | None
    backing_path: str | None
    data_file: str | None


@dataclass(frozen=True)
class ImageInfo:
    """An image and everything it pulls in: backing files in chain order, top's data file."""

    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing_files: tuple[str, ...]
    data_file: str | None
    chain: tuple[ChainLink, ...] = ()

    @property
    def referenced_files(self) -> tuple[str, ...]:
        """Every file besides `path` that QEMU opens for this image: backing files and data files."""
        data_files = tuple(link.data_file for link in self.chain if link.data_file)
        return self.backing_files + data_files


def has_protocol(name: str) -> bool:
    """True when QEMU would read `name` as `protocol:...` rather than a file.

    QEMU's own rule (`path_has_protocol`): a ':' before the first '/'.
    """
    colon, slash = name.find(":"), name.find("/")
    return colon != -1 and (slash == -1 or colon < slash)


def image_info(
    path: str,
    fmt: str,
    *,
    timeout: float = 30,
    roots: Sequence[Path] | None = None,
    field: str = "path",
) -> ImageInfo:
    """Read `path` as `fmt` and walk its backing chain, each image with its recorded format.

    With `roots`, every file of the chain must lie inside them (symlinks
    resolved) and is checked before it is opened; without, the walk still
    refuses protocol names and unrecorded formats, and `check_image_chain`
    applies the roots afterwards. `timeout` bounds the whole walk.
    """
    if fmt not in IMAGE_FORMATS:
        raise InvalidInput(f"unsupported image format {fmt!r}; use one of {', '.join(IMAGE_FORMATS)}", field="format")
    absolute_path(path, field=field)
    deadline = time.monotonic() + timeout
    links: list[ChainLink] = []
    seen: set[str] = set()
    top: dict[str, Any] = {}
    current, current_fmt, parent = path, fmt, None
    while True:
        real = _checked_file(current, roots=roots, field=field, parent=parent)
        if real in seen or len(links) >= MAX_CHAIN_DEPTH:
            raise InvalidInput(f"the backing chain of {path} loops or is deeper than {MAX_CHAIN_DEPTH} images", field=field)
        seen.add(real)
        data = _qemu_img_info(real, current_fmt, deadline=deadline, timeout=timeout, field=field)
        link = _link(real, current_fmt, data, field=field)
        links.append(link)
        top = top or data
        if link.data_file is not None and roots is not None:
            _checked_file(link.data_file, roots=roots, field=field, parent=real, role="data file")
        if link.backing_path is None:
            break
        current, current_fmt, parent = link.backing_path, link.backing_format or "", real
    return ImageInfo(
        path=links[0].path,
        format=str(top.get("format", fmt)),
        virtual_size=links[0].virtual_size,
        actual_size=int(top.get("actual-size", 0)),
        backing_files=tuple(link.path for link in links[1:]),
        data_file=links[0].data_file,
        chain=tuple(links),
    )


def check_image_chain(info: ImageInfo, roots: Sequence[Path], field: str) -> None:
    """InvalidInput when a backing file or a data file of `info` resolves outside `roots`."""
    for name in info.referenced_files:
        _require_inside(name, roots, field=field, what=f"{name}, referenced by {info.path},")


def chain_record(info: ImageInfo) -> list[dict[str, str | None]]:
    """`info`'s whole chain, top first, as it is stored and compared: each image's
    resolved path, its format and its data file (as the header names it)."""
    return [{"path": link.path, "format": link.format, "data_file": link.data_file} for link in info.chain]


def check_image(info: ImageInfo, *, timeout: float = 30, field: str = "path") -> None:
    """InvalidInput when a qcow2 of `info`'s chain is damaged (`qemu-img check`).

    `info` reads only the header, so a truncated or corrupted qcow2 passes it
    and fails later, inside the guest or at start. Call this only once every
    file of the chain was found acceptable (`image_info` with roots, or
    `check_image_chain`): `check` opens the backing chain and the data file.
    Leaked clusters alone (exit 3) waste space but lose no data and pass.
    """
    deadline = time.monotonic() + timeout
    for link in info.chain:
        if link.format != "qcow2":
            continue
        command = [QEMU_IMG, "check", "--output=json", "-f", "qcow2", "-U", link.path]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=max(deadline - time.monotonic(), 0.01),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InvalidInput(f"checking {link.path} with qemu-img took longer than {timeout:g} s", field=field) from None
        if done.returncode not in (0, 3):
            found = _words(done.stderr) if done.stderr.strip() else f"qemu-img check exited with {done.returncode}"
            raise InvalidInput(f"{link.path} is a damaged qcow2 image: {found}", field=field, code="image_damaged")


def convert_image(source: str, source_format: str, dest: str, dest_format: str, *, dest_is_new: bool = False) -> None:
    """Copy `source` into the existing image `dest` (`qemu-img convert -n`).

    `-n`: the target was created by libvirt, so libvirt knows the file and
    its format; qemu-img only fills it. Both formats are explicit. No time
    limit: copying a large disk legitimately takes minutes, and this runs in
    a task, not a request. The source is opened read-only and, without `-U`,
    with a shared lock, so a disk that a running guest writes is refused
    rather than copied half-written.

    `dest_is_new`: `dest` was just created empty (reads as zeros), so the
    parts of the source that hold nothing need not be written as zeros
    (`--target-is-zero`). Without it, qemu-img cannot assume an existing
    target is blank and writes a zero marker for every empty cluster of the
    source's whole virtual size: megabytes of metadata for a large, mostly
    empty template, and a copy that is larger than it needs to be.
    """
    for value in (source_format, dest_format):
        if value not in IMAGE_FORMATS:
            raise InvalidInput(f"unsupported image format {value!r}; use one of {', '.join(IMAGE_FORMATS)}", field="format")
    # -t writeback: the copy is flushed to disk before the VM is called running (the default, unsafe, never flushes).
    command = [QEMU_IMG, "convert", "-n", *(["--target-is-zero"] if dest_is_new else []), "-t", "writeback"]
    command += ["-f", source_format, "-O", dest_format, source, dest]
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise HypervisorError(f"copying {source} to {dest} failed: {_words(done.stderr)}")


def _checked_file(name: str, *, roots: Sequence[Path] | None, field: str, parent: str | None, role: str = "backing file") -> str:
    """The resolved path of `name` once it is known to be a regular file (inside `roots`, if given).

    `parent` is the image that names `name` as its `role` (None: `name` is the top image).
    """
    what = f"the {role} {name} of {parent}" if parent else name
    if has_protocol(name) or not name.startswith("/"):
        raise InvalidInput(f"{what} is not a plain absolute file name", field=field)
    real = os.path.realpath(name)
    if roots is not None:
        _require_inside(real, roots, field=field, what=what)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        if parent is None:
            raise NotFound(f"{name} does not exist", field=field) from None
        raise InvalidInput(f"{what} does not exist", field=field) from None
    except OSError as exc:
        raise InvalidInput(f"{what} cannot be read: {exc.strerror}", field=field) from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{what} is not a regular file", field=field)
    return real


def _require_inside(name: str, roots: Sequence[Path], *, field: str, what: str) -> None:
    if not is_inside(Path(os.path.realpath(name)), roots):
        allowed = ", ".join(str(root) for root in roots) or "(none configured)"
        raise InvalidInput(f"{what} lies outside the allowed directories ({allowed})", field=field, code="path_outside_roots")


def _qemu_img_info(path: str, fmt: str, *, deadline: float, timeout: float, field: str) -> dict[str, Any]:
    # -U: read an image a running guest holds locked. No --backing-chain: see the module docstring.
    command = [QEMU_IMG, "info", "--output=json", "-f", fmt, "-U", path]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=max(deadline - time.monotonic(), 0.01), check=False
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed and reaped qemu-img by now.
        raise InvalidInput(f"reading {path} with qemu-img took longer than {timeout:g} s", field=field) from None
    if done.returncode != 0:
        raise InvalidInput(f"{path} cannot be read as {fmt}: {_words(done.stderr)}", field=field)
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"qemu-img gave no readable answer for {path}: {exc}", field=field) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"qemu-img gave no readable answer for {path}", field=field)
    return data


def _link(path: str, fmt: str, data: dict[str, Any], *, field: str) -> ChainLink:
    """One chain entry, refusing references QEMU would resolve in an unsafe way."""
    backing_name = data.get("backing-filename")
    backing_format = data.get("backing-filename-format")
    backing_path = None
    if backing_name:
        if has_protocol(backing_name):
            raise InvalidInput(f"{path} names {backing_name!r} as backing file, which is not a plain file", field=field)
        if backing_format not in IMAGE_FORMATS:
            # Without a recorded format QEMU would probe the backing file.
            recorded = f"format {backing_format!r}" if backing_format else "no format"
            raise InvalidInput(f"the backing file {backing_name} of {path} has {recorded}; only qcow2 or raw is accepted", field=field)
        backing_path = os.path.normpath(os.path.join(os.path.dirname(path), backing_name))
    specific = data.get("format-specific") or {}
    data_file = (specific.get("data") or {}).get("data-file") if specific.get("type") == "qcow2" else None
    if data_file is not None and (has_protocol(data_file) or not data_file.startswith("/")):
        # QEMU resolves a relative data file name against its own working
        # directory, not the image's: there is no safe reading of it.
        raise InvalidInput(f"{path} has the external data file {data_file!r}, which is not an absolute file name", field=field)
    return ChainLink(
        path=path,
        format=fmt,
        virtual_size=int(data.get("virtual-size", 0)),
        backing_filename=backing_name or None,
        backing_format=backing_format if backing_name else None,
        backing_path=backing_path,
        data_file=data_file,
    )


def _words(stderr: str) -> str:
    """qemu-img's message without its program-name prefix, on one line."""
    lines = [line.removeprefix("qemu-img: ").strip() for line in stderr.strip().splitlines() if line.strip()]
    return "; ".join(lines) or "qemu-img failed without a message"
