"""`list_bridges` without the daemon: libvirt's interface driver when there is one, else /sys/class/net
(the daemon has no interface driver); any other libvirt error is Vapor's. The real daemon:
tests/integration/test_host_lists.py."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from vaporsite.errors import HypervisorError
from vms.hypervisor.errors import VIR_ERR_INTERNAL_ERROR, VIR_ERR_NO_SUPPORT
from vms.hypervisor.libvirt_driver import LibvirtDriver


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, 0, message, 2, "", None, None, 0, 0)
    return error


class Interface:
    def __init__(self, name: str, kind: str) -> None:
        self._name, self._kind = name, kind

    def name(self) -> str:
        return self._name

    def XMLDesc(self, flags: int) -> str:
        return f"<interface type='{self._kind}' name='{self._name}'/>"


class Connection:
    def __init__(self, interfaces: list[Interface] | None = None, error: libvirt.libvirtError | None = None) -> None:
        self.interfaces, self.error = interfaces or [], error

    def listAllInterfaces(self, flags: int) -> list[Interface]:
        if self.error is not None:
            raise self.error
        return self.interfaces


def driver(connection: Connection, monkeypatch: pytest.MonkeyPatch) -> LibvirtDriver:
    hv = LibvirtDriver("test:///default")
    monkeypatch.setattr(hv, "_connection", lambda: connection)
    return hv


def test_bridges_are_the_interfaces_of_type_bridge_sorted(monkeypatch):
    interfaces = [Interface("virbr0", "bridge"), Interface("eth0", "ethernet"), Interface("br-lan", "bridge"), Interface("bond0", "bond")]
    assert driver(Connection(interfaces), monkeypatch).list_bridges() == ["br-lan", "virbr0"]


def test_without_an_interface_driver_the_bridges_are_read_from_sys(monkeypatch, tmp_path: Path):
    sys_net = tmp_path / "net"
    for name, bridge in (("br0", True), ("eth0", False), ("virbr0", True)):
        (sys_net / name).mkdir(parents=True)
        if bridge:
            (sys_net / name / "bridge").mkdir()
    real_scandir = __import__("os").scandir
    monkeypatch.setattr("os.scandir", lambda path: real_scandir(sys_net if path == "/sys/class/net" else path))
    unsupported = libvirt_error(VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver: virConnectListAllInterfaces")
    assert driver(Connection(error=unsupported), monkeypatch).list_bridges() == ["br0", "virbr0"]


def test_any_other_libvirt_error_is_vapor_s(monkeypatch):
    broken = libvirt_error(VIR_ERR_INTERNAL_ERROR, "internal error: udev is confused")
    with pytest.raises(HypervisorError, match="udev is confused"):
        driver(Connection(error=broken), monkeypatch).list_bridges()
