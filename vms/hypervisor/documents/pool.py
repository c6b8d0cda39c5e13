"""A storage pool (`<pool>`): Vapor defines directory pools and reads any pool's backend and path."""

from __future__ import annotations

from lxml import etree

from vms.hypervisor.documents import parse, serialize, sub


def dir_pool_xml(name: str, path: str) -> str:
    """A directory storage pool: volumes are plain files under `path`."""
    pool = etree.Element("pool", type="dir")
    sub(pool, "name", name)
    target = sub(pool, "target")
    sub(target, "path", path)
    return serialize(pool)


def pool_type(document: str) -> str:
    """The pool's backend (dir, logical, netfs, ...)."""
    return parse(document, root="pool").get("type", "")


def pool_target_path(document: str) -> str:
    """The directory (or device) a pool's XML says it lives in; "" if none."""
    return parse(document, root="pool").findtext("target/path") or ""
