"""libvirt's XML documents, one module each: built from Vapor's records and read back.

`domain` (a VM's definition, live or inactive), `pool`, `volume`, `network`,
`capabilities` (what the host and a domain type offer), `interface` (a host
NIC) and `snapshot`. Each module builds its document element by element with
lxml, never by string formatting, so a name or path holding `<`, `&` or
quotes stays data; and each reads the same document back through `parse`
below. Pure functions with no libvirt import: the tests compare them with
literal XML and golden files without a daemon.

Every document is read by the one hardened parser, `vaporsite.safexml` (no
DTD, no entities, no network, no DOCTYPE), which osinfo-db's files share.
"""

from __future__ import annotations

from lxml import etree

from vaporsite.safexml import DocumentError, parse, parse_file


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    """A child element `tag` of `parent`, with `text` (when given) and attributes."""
    element = etree.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def serialize(root: etree._Element) -> str:
    """The document, pretty-printed (deterministic: lxml keeps attribute order)."""
    return etree.tostring(root, encoding="unicode", pretty_print=True)


__all__ = ["DocumentError", "parse", "parse_file", "serialize", "sub", "yes"]
