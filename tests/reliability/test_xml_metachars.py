"""XML metacharacters in every string of create-enhanced that reaches the domain XML.

The VM name is restricted (letters, digits, `-_.`), os_variant is checked against
libosinfo, and the title is made from the name. What a request can still put into the
document: an existing disk's path, the storage pool (its directory becomes the path of
new and cloned volumes), the ISO paths (by absolute path and by bare file name), NAT
network and bridge names, the graphics password, and the serial log path (from
VAPOR_SERIAL_LOG_DIR). Each value below holds `<`, `&`, quotes, `]]>` or text that
looks like an entity; the document must stay well formed (lxml parses it) and each
value must come back byte for byte, from the dry run's XML and from the XML handed to
the (fake) hypervisor. Characters XML cannot carry at all are refused with a 4xx.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.reliability.hostile import Ground, vm_payload
from tests.support.api import CREATE_URL
from tests.support.images import make_image
from tests.support.isos import make_iso
from tests.vms import conftest as vm_fixtures
from vms.hypervisor.documents.domain import MASK

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "XML metacharacters"
hv = vm_fixtures.hv
disk_root = vm_fixtures.disk_root

VALUES = ["<", "&", "'", '"', "]]>", "<&'\"]]>", "&amp;", "&#x3c;", "<!ENTITY", "<a>", "x&lt;y", "é<€>"]
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@dataclasses.dataclass
class Planted:
    payload: dict[str, Any]
    expected: dict[str, tuple[str, str]]  # field -> (xpath, value the XML must hold)


def plant(index: int, value: str, hv, disk_root: Path, iso_dirs, tmp_path: Path, settings) -> Planted:
    """Files, pool, networks and settings holding `value`, and the request that names them."""
    name = f"xml{index}"
    disk = make_image(disk_root / f"disk{value}.qcow2", "1M")
    base = disk_root / "base.qcow2"
    if not base.exists():
        make_image(base, "1M")
    pool = tmp_path / f"pool{value}"
    pool.mkdir(exist_ok=True)
    hv.pools[f"pool{value}"] = pool
    iso = make_iso(iso_dirs.extra_root / f"install{value}.iso")
    secondary = make_iso(iso_dirs.search[0] / f"drivers{value}.iso")
    hv.networks.add(f"net{value}")
    hv.bridges.add(f"br{value}")
    logs = tmp_path / f"logs{value}"
    logs.mkdir(exist_ok=True)
    settings.VAPOR = dataclasses.replace(settings.VAPOR, serial_log_dir=logs)
    payload = vm_payload(
        name=name,
        disks=[{"path": str(disk)}, {"size": 1}, {"clone_from": str(base)}],
        storage_pool=f"pool{value}",
        iso_path=str(iso),
        secondary_iso=secondary.name,
        networks=[{"type": "nat", "source": f"net{value}"}, {"type": "bridge", "source": f"br{value}"}],
        graphics={"type": "vnc", "password": value},
    )
    expected = {
        "disks.0.path": ("devices/disk[1]/source/@file", str(disk)),
        "storage_pool (new volume)": ("devices/disk[2]/source/@file", str(pool / f"{name}-disk1.qcow2")),
        "storage_pool (clone)": ("devices/disk[3]/source/@file", str(pool / f"{name}-disk2.qcow2")),
        "iso_path": ("devices/disk[4]/source/@file", str(iso)),
        "secondary_iso": ("devices/disk[5]/source/@file", str(secondary)),
        "networks.0.source": ("devices/interface[1]/source/@network", f"net{value}"),
        "networks.1.source": ("devices/interface[2]/source/@bridge", f"br{value}"),
        "graphics.password": ("devices/graphics/@passwd", value),
        "serial log (VAPOR_SERIAL_LOG_DIR)": ("devices/serial/log/@file", str(logs / f"{name}.serial.log")),
    }
    return Planted(payload, expected)


def check_document(xml: str, planted: Planted, value: str, mode: str, tally: Any) -> None:
    try:
        root = etree.fromstring(xml.encode(), PARSER)
        problem = ""
    except etree.XMLSyntaxError as exc:
        root, problem = None, str(exc)
    for field, (xpath, wanted) in planted.expected.items():
        if mode == "dry run" and field == "graphics.password":
            wanted = MASK  # the dry run never shows the password
        result = root.xpath(xpath) if root is not None else []
        found = result if isinstance(result, list) else [result]
        got = str(found[0]) if len(found) == 1 else f"{len(found)} matches"
        ok = root is not None and got == wanted
        tally.record(SUITE, f"{mode}: {field} holding {value!r}", refused=ok, detail=problem or f"round-trip {'ok' if ok else got!r}")
        assert root is not None, problem
        assert got == wanted, (field, xpath, got, wanted)
    assert root is not None and root.tag == "domain"
    assert len(root.findall("devices/disk")) == 5 and len(root.findall("devices/interface")) == 2  # nothing was added


@pytest.mark.parametrize("index", range(len(VALUES)), ids=[ascii(v) for v in VALUES])
def test_metacharacters_stay_data_in_the_domain_xml(
    index: int, hv, disk_root, iso_dirs, tmp_path, settings, vm_api, run_tasks, tally
) -> None:
    value = VALUES[index]
    planted = plant(index, value, hv, disk_root, iso_dirs, tmp_path, settings)

    dry = vm_api.post(f"{CREATE_URL}?dry_run=1", planted.payload, format="json")
    assert dry.status_code == 200, dry.content
    check_document(dry.json()["domain_xml"], planted, value, "dry run", tally)

    with run_tasks():
        created = vm_api.post(CREATE_URL, planted.payload, format="json")
    assert created.status_code == 202, created.content
    name = planted.payload["name"]
    assert name in hv.domains, created.json()
    check_document(hv.domains[name].xml, planted, value, "defined", tally)


UNCARRIABLE = [
    ("graphics.password", {"graphics": {"type": "vnc", "password": "pw\x01"}}),
    ("graphics.password", {"graphics": {"type": "vnc", "password": "pw\x1b[0m"}}),
    ("graphics.password", {"graphics": {"type": "vnc", "password": "pw\ufffe"}}),
    ("networks.0.source", {"networks": [{"type": "bridge", "source": "br\x0b"}]}),
    ("networks.0.source", {"networks": [{"type": "nat", "source": "net\x00"}]}),
]


@pytest.mark.parametrize(("field", "change"), UNCARRIABLE, ids=[ascii(c) for _, c in UNCARRIABLE])
def test_characters_xml_cannot_carry_are_refused(
    field: str, change: dict[str, Any], hv, disk_root, iso_dirs, vm_api, run_tasks, tally
) -> None:
    shown = ascii(change)
    # The fake host has a network and a bridge with these very names, so only the XML layer can refuse them.
    for nic in change.get("networks", []):
        (hv.networks if nic["type"] == "nat" else hv.bridges).add(nic["source"])
    ground = Ground(hv, [disk_root, hv.pool_dir, *iso_dirs.search, iso_dirs.extra_root, iso_dirs.download])
    before = ground.snapshot()
    for mode, url in (("dry run", f"{CREATE_URL}?dry_run=1"), ("create", CREATE_URL)):
        with run_tasks():
            response = vm_api.post(url, vm_payload(name="ctl", disks=[{"size": 1}], **change), format="json")
        leftovers, left = ground.leftovers(before)
        refused = 400 <= response.status_code < 500
        tally.record(
            SUITE, f"{mode}: {field} holding {shown}", refused=refused, leftovers=leftovers, detail=f"{response.status_code} {left}"
        )
        assert refused, (shown, response.status_code, response.content)
        assert leftovers == 0, left
