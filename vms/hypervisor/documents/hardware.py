"""A domain's changeable hardware (issue 14, item 3): memory, vCPUs, boot order and NICs.

Built and read with lxml like `domain` (whose `_interface` writes the same
`<interface>`): pure functions, no libvirt, shared by the driver's
`HardwareMixin` and the fake hypervisor of the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from vms.hypervisor.documents import parse, serialize, sub
from vms.hypervisor.specs import NicSpec

_KIB_PER_MIB = 1024


@dataclass(frozen=True)
class Hardware:
    """What a domain's XML says of its memory (MiB), vCPUs and boot devices (in order: target devs and MACs)."""

    memory_mib: int
    max_memory_mib: int
    vcpus: int
    max_vcpus: int
    boot: tuple[str, ...]
    macs: tuple[str, ...]


def interface_xml(spec: NicSpec) -> str:
    """One `<interface>` for attachDeviceFlags, as the domain builder writes it."""
    kind = {"network": "network", "bridge": "bridge"}[spec.kind]
    interface = etree.Element("interface", type=kind)
    if spec.mac:
        sub(interface, "mac", address=spec.mac)
    sub(interface, "source", **{kind: spec.source})
    sub(interface, "model", type=spec.model)
    return serialize(interface)


def interface_of(xml: str, mac: str) -> str | None:
    """The domain's `<interface>` with this MAC, as a document of its own (for detachDeviceFlags); None without one."""
    for interface in parse(xml, root="domain").iterfind("devices/interface"):
        address = interface.find("mac")
        if address is not None and address.get("address", "").lower() == mac.lower():
            return etree.tostring(interface, encoding="unicode")
    return None


def _device_key(device: etree._Element) -> str:
    if device.tag == "interface":
        mac = device.find("mac")
        return mac.get("address", "").lower() if mac is not None else ""
    target = device.find("target")
    return target.get("dev", "") if target is not None else ""


def read_hardware(xml: str) -> Hardware:
    root = parse(xml, root="domain")
    vcpu = root.find("vcpu")
    max_vcpus = int((vcpu.text or "1").strip()) if vcpu is not None else 1
    ordered: list[tuple[int, str]] = []
    for device in root.iterfind("devices/*"):
        boot = device.find("boot")
        if boot is not None and device.tag in ("disk", "interface"):
            ordered.append((int(boot.get("order", "0")), _device_key(device)))
    return Hardware(
        memory_mib=_kib(root.find("currentMemory")) // _KIB_PER_MIB,
        max_memory_mib=_kib(root.find("memory")) // _KIB_PER_MIB,
        vcpus=int(vcpu.get("current", max_vcpus)) if vcpu is not None else 1,
        max_vcpus=max_vcpus,
        boot=tuple(key for _order, key in sorted(ordered)),
        macs=tuple(m.get("address", "").lower() for m in root.iterfind("devices/interface/mac")),
    )


_UNIT_KIB = {"kib": 1, "k": 1, "mib": 1024, "m": 1024, "gib": 1024**2, "g": 1024**2, "b": 0, "bytes": 0}


def _kib(element: etree._Element | None) -> int:
    if element is None:
        return 0
    value = int((element.text or "0").strip())
    unit = element.get("unit", "KiB").lower()
    factor = _UNIT_KIB.get(unit)
    return value // 1024 if not factor else value * factor


def with_boot_order(xml: str, devices: list[str]) -> str:
    """The domain with `<boot order>` on exactly `devices` (target devs of disks and CD-ROMs, NIC MACs), in that order.

    Every other per-device boot element and any `<os><boot dev>` go. An unknown device is a ValueError
    (the service checks them against the VM's rows first).
    """
    root = parse(xml, root="domain")
    for boot in root.findall("os/boot"):
        boot.getparent().remove(boot)  # type: ignore[union-attr]
    by_key: dict[str, etree._Element] = {}
    for device in root.iterfind("devices/*"):
        if device.tag not in ("disk", "interface", "hostdev", "redirdev", "filesystem"):
            continue
        for boot in device.findall("boot"):
            device.remove(boot)
        if device.tag in ("disk", "interface"):
            by_key[_device_key(device)] = device
    for order, key in enumerate(devices, start=1):
        found = by_key.get(key.lower() if ":" in key else key)
        if found is None:
            raise ValueError(f"the domain has no device {key!r}")
        sub(found, "boot", order=str(order))
    return serialize(root)


def with_memory(xml: str, *, memory_mib: int | None = None, max_memory_mib: int | None = None) -> str:
    """The domain with its current and/or maximum memory replaced (the fake hypervisor's setMemoryFlags)."""
    root = parse(xml, root="domain")
    for tag, value in (("memory", max_memory_mib), ("currentMemory", memory_mib)):
        if value is not None:
            element = root.find(tag)
            assert element is not None
            element.text, element.attrib["unit"] = str(value), "MiB"
    return serialize(root)


def with_vcpus(xml: str, *, vcpus: int | None = None, max_vcpus: int | None = None) -> str:
    """The domain with its current and/or maximum vCPUs replaced (the fake hypervisor's setVcpusFlags)."""
    root = parse(xml, root="domain")
    vcpu = root.find("vcpu")
    assert vcpu is not None
    maximum = max_vcpus if max_vcpus is not None else int((vcpu.text or "1").strip())
    current = vcpus if vcpus is not None else min(int(vcpu.get("current", maximum)), maximum)
    vcpu.text = str(maximum)
    if current < maximum:
        vcpu.set("current", str(current))
    elif "current" in vcpu.attrib:
        del vcpu.attrib["current"]
    return serialize(root)


def with_interface(xml: str, interface: str) -> str:
    root = parse(xml, root="domain")
    devices = root.find("devices")
    assert devices is not None
    devices.append(parse(interface, root="interface"))
    return serialize(root)


def without_interface(xml: str, mac: str) -> str:
    root = parse(xml, root="domain")
    for interface in root.findall("devices/interface"):
        if _device_key(interface) == mac.lower():
            interface.getparent().remove(interface)  # type: ignore[union-attr]
    return serialize(root)
