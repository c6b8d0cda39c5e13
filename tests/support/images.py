"""Disk images for the tests, made and read with qemu-img, and file digests."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

QEMU_IMG_TIMEOUT = 120


def qemu_img(*args: str) -> str:
    """Run `qemu-img ARGS...` and return what it printed; CalledProcessError (with stderr) when it fails."""
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True, timeout=QEMU_IMG_TIMEOUT)
    return done.stdout


def qemu_img_info(path: Path | str, *options: str) -> dict[str, Any]:
    """`qemu-img info` as JSON. Options go before the path: `"-f", "qcow2"` to name the format (no probing),
    `"-U"` to read an image a running guest holds."""
    info: dict[str, Any] = json.loads(qemu_img("info", "--output=json", *options, str(path)))
    return info


def make_image(path: Path, size: str = "64M", fmt: str = "qcow2", *options: str) -> Path:
    """A new image at `path`; `options` go to `qemu-img create` as they are (`-b BASE -F FMT`, `-o ...`, `-u`).

    World-readable: in the real-daemon tests QEMU runs as libvirt-qemu and must read what a test made.
    """
    qemu_img("create", "-q", "-f", fmt, *options, str(path), size)
    path.chmod(0o644)
    return path


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def overwrite_start(disk: Path, image: Path) -> None:
    """Write `image`'s bytes over the start of `disk`, keeping its size: what a guest
    writing its own raw disk can do to the file's first sectors at any time."""
    with disk.open("r+b") as handle:
        handle.write(image.read_bytes())
