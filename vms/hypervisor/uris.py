"""Libvirt URIs, read without libvirt (pure): importing this never loads the bindings."""

from __future__ import annotations

from urllib.parse import urlsplit


def files_are_local(uri: str) -> bool:
    """Whether the host at `uri` sees this machine's files: its own daemon over the local socket (`qemu:///system`,
    `qemu+unix:///system`, `qemu:///session`) or the in-process test driver. A URI naming a host (`qemu+tcp://h2/...`,
    `qemu+ssh://...`) does not, even one naming this machine: its daemon may run in another mount namespace."""
    parts = urlsplit(uri)
    scheme, _, transport = parts.scheme.partition("+")
    return scheme == "test" or (not parts.hostname and transport in ("", "unix"))
