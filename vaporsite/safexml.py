"""The one XML parser for every document Vapor reads: libvirt's answers and osinfo-db's files.

It never loads a DTD, resolves an entity or touches the network, and a
document that declares a DOCTYPE is refused outright: libvirt and osinfo-db
never write one, so one can only be an attempt at entity tricks. It lives in
the project package because both the hypervisor adapter and `guestos` read
XML, and neither may import the other.
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
