"""libvirt's XML documents, one module each: built from Vapor's records and read back.

`domain` (a VM's definition, live or inactive), `pool`, `volume`, `network`,
`capabilities` (what the host and a domain type offer), `interface` (a host
NIC) and `snapshot`. Each module builds its document element by element with
lxml, never by string formatting, so a name or path holding `<`, `&` or
quotes stays data; and each reads the same document back through `parse`
below. Pure functions with no libvirt import: the tests compare them with
literal XML and golden files without a daemon.

There is one parser for every document Vapor reads, here and for the
osinfo-db catalogue: it never loads a DTD, resolves an entity or touches the
network, and a document that declares a DOCTYPE is refused outright. libvirt
never writes one, so one can only be an attempt at entity tricks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from lxml import etree

from vaporsite.errors import HypervisorError

_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False)


class DocumentError(HypervisorError):
    """A document that does not parse, declares a DOCTYPE, or is not the kind asked for."""


def parse(document: str | bytes, *, root: str | None = None) -> etree._Element:
    """The root element of `document` (libvirt's answer), which must be a `<root>` when given."""
    kind = f"{root} XML" if root else "XML"
    data = document.encode() if isinstance(document, str) else document
    try:
        element = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise DocumentError(f"libvirt returned {kind} that does not parse: {exc}") from exc
    return _checked(element, kind, root)


def parse_file(path: Path) -> etree._Element:
    """The root element of the XML file at `path` (OSError when it cannot be read)."""
    try:
        element = etree.parse(str(path), _PARSER).getroot()
    except etree.XMLSyntaxError as exc:
        raise DocumentError(f"{path} does not parse: {exc}") from exc
    return _checked(element, str(path), None)


def _checked(element: etree._Element, kind: str, root: str | None) -> etree._Element:
    docinfo = element.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise DocumentError(f"{kind} with a DOCTYPE is refused")
    if root is not None and element.tag != root:
        raise DocumentError(f"expected a <{root}> document, got <{element.tag}>")
    return element


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
