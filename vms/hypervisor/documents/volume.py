"""A storage volume (`<volume>`): new thin volumes, clone targets, and a volume's format read back."""

from __future__ import annotations

from lxml import etree

from vaporsite.errors import InvalidInput
from vms.hypervisor.documents import parse, serialize, sub
from vms.hypervisor.specs import IMAGE_FORMATS


def _check_volume(fmt: str, capacity_bytes: int) -> None:
    if fmt not in IMAGE_FORMATS:
        raise InvalidInput(f"unsupported volume format {fmt!r}; use one of {', '.join(IMAGE_FORMATS)}", field="format")
    if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
        raise InvalidInput(f"capacity must be a positive number of bytes, not {capacity_bytes!r}", field="capacity")


# (uid, gid) a new volume's file is given to; None: libvirt's default (its own user, root).
Owner = tuple[int, int] | None


def _volume(name: str, capacity_bytes: int, fmt: str, owner: Owner = None) -> tuple[etree._Element, etree._Element]:
    """The `<volume>` element and its `<target>`, thin (`allocation` 0), owned by `owner` (mode 0600)."""
    _check_volume(fmt, capacity_bytes)
    volume = etree.Element("volume")
    sub(volume, "name", name)
    sub(volume, "capacity", str(capacity_bytes), unit="bytes")
    sub(volume, "allocation", "0", unit="bytes")
    target = sub(volume, "target")
    sub(target, "format", type=fmt)
    if owner is not None:
        permissions = sub(target, "permissions")
        sub(permissions, "owner", str(owner[0]))
        sub(permissions, "group", str(owner[1]))
        sub(permissions, "mode", "0600")
    return volume, target


def volume_xml(name: str, capacity_bytes: int, fmt: str = "qcow2", *, owner: Owner = None) -> str:
    """A thin volume: `allocation` 0 so libvirt reserves no space up front.

    The format is always stated, because an image whose format QEMU has to
    guess can claim to be something else (CVE-2008-2004).
    """
    volume, target = _volume(name, capacity_bytes, fmt, owner)
    if fmt == "qcow2":
        # Without it libvirt writes QEMU 0.10's layout (no zero clusters, no lazy refcounts).
        sub(target, "compat", "1.1")
    return serialize(volume)


def clone_volume_xml(
    name: str,
    capacity_bytes: int,
    fmt: str = "qcow2",
    *,
    backing_path: str | None = None,
    backing_format: str | None = None,
    owner: Owner = None,
) -> str:
    """The target of a clone: a full copy (no backing) or a linked qcow2 overlay.

    An overlay names its backing file *and* that file's format: without the
    format QEMU would probe the backing file, and a raw template holding a
    qcow2 header would be read as qcow2 (CVE-2008-2004). qcow2 targets ask
    for compat 1.1, because libvirt otherwise writes the 0.10 layout of
    QEMU 0.10 (no zero clusters, no lazy refcounts).
    """
    volume, target = _volume(name, capacity_bytes, fmt, owner)
    if fmt == "qcow2":
        sub(target, "compat", "1.1")
    if backing_path is not None:
        if fmt != "qcow2":
            raise InvalidInput(f"a linked clone is a qcow2 overlay; format {fmt!r} cannot have a backing file", field="format")
        if backing_format not in IMAGE_FORMATS:
            raise InvalidInput(f"unsupported backing format {backing_format!r}; use one of {', '.join(IMAGE_FORMATS)}", field="format")
        backing = sub(volume, "backingStore")
        sub(backing, "path", backing_path)
        sub(backing, "format", type=backing_format)
    return serialize(volume)


def volume_format(document: str) -> str:
    """The format a volume's XML states (qcow2, raw, ...); "" if none."""
    node = parse(document, root="volume").find("target/format")
    return "" if node is None else node.get("type", "")
