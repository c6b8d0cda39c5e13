"""What the host offers: capabilities, vCPU limits, networks and bridges.

A mixin of `LibvirtDriver`. The capability answers are cached per driver:
they do not change while a daemon runs, and asking costs a round trip (and a
QEMU probe after a restart) per request.
"""

from __future__ import annotations

import os
from typing import Any

import libvirt

from vaporsite.errors import InvalidInput
from vms.hypervisor import FirmwareSupport, HostCapabilities, HostResources, NetworkInfo
from vms.hypervisor._connection import Connection, calls, lookup_or_none, undefined_on_failure, vapor_error
from vms.hypervisor.documents.capabilities import firmware_support, host_capabilities
from vms.hypervisor.documents.capabilities import max_vcpus as domain_max_vcpus
from vms.hypervisor.documents.interface import interface_type
from vms.hypervisor.documents.network import nat_network_xml, network_shape
from vms.hypervisor.errors import (
    VIR_ERR_CONFIG_UNSUPPORTED,
    VIR_ERR_INVALID_ARG,
    VIR_ERR_NO_INTERFACE,
    VIR_ERR_NO_NETWORK,
    VIR_ERR_NO_SUPPORT,
    validate_bridge_name,
    validate_name,
)


class HostMixin(Connection):
    """Host capabilities, virtual networks and Linux bridges."""

    def __init__(self, uri: str | None = None, *, kept: bool = False) -> None:
        super().__init__(uri, kept=kept)
        self._capabilities: HostCapabilities | None = None
        self._max_vcpus: dict[tuple[str, str, str], int] = {}

    # Networks

    def list_networks(self) -> list[NetworkInfo]:
        with calls():
            return sorted((self._network_info(n) for n in self._connection().listAllNetworks(0)), key=lambda n: n.name)

    def network_exists(self, name: str) -> bool:
        conn = self._connection()
        return lookup_or_none(conn.networkLookupByName, name, VIR_ERR_NO_NETWORK) is not None

    def ensure_nat_network(self, name: str, bridge: str, cidr: str) -> bool:
        """Make sure a network `name` exists, is active and autostarts.

        Returns True when it had to be defined (as NAT on `bridge` with DHCP
        over `cidr`). An existing network is kept as it is, like pools.
        """
        validate_name(name, field="network", what="network")
        validate_bridge_name(bridge)
        document = nat_network_xml(name, bridge, cidr)
        conn = self._connection()
        network = lookup_or_none(conn.networkLookupByName, name, VIR_ERR_NO_NETWORK)
        created = network is None
        with calls(field="network"):
            if network is None:
                network = conn.networkDefineXML(document)
            with undefined_on_failure(network, created):
                if not network.isActive():
                    network.create()
                if not network.autostart():
                    network.setAutostart(1)
        return created

    @staticmethod
    def _network_info(network: Any) -> NetworkInfo:
        with calls():
            shape = network_shape(network.XMLDesc(0))
            return NetworkInfo(
                name=network.name(),
                active=bool(network.isActive()),
                autostart=bool(network.autostart()),
                forward_mode=shape.forward_mode,
                bridge=shape.bridge,
                cidr=shape.cidr,
            )

    # Host

    def capabilities(self) -> HostCapabilities:
        """Architectures and domain types the host offers (cached for this driver's life)."""
        if self._capabilities is None:
            with calls():
                document = self._connection().getCapabilities()
            self._capabilities = host_capabilities(document)
        return self._capabilities

    def host_resources(self) -> HostResources:
        """Memory, logical CPUs, CPU model and name of the host, as libvirt's node info gives them.

        Not cached: a daemon may move to bigger hardware, and callers that
        ask often (the admin dashboard) cache the answer themselves.
        """
        with calls():
            conn = self._connection()
            # getInfo(): [model, memory in MiB, cpus, MHz, NUMA nodes, sockets, cores, threads]
            model, memory_mib, cpus = conn.getInfo()[:3]
            hostname = conn.getHostname()
        memory_bytes = memory_mib * 1024 * 1024
        # The node's memory statistics are the kernel's MemTotal. Node info adds up the NUMA cells'
        # memory from sysfs, which can say far less (10 of 24 GiB on these machines, where memory
        # is plugged in after boot), so the dashboard's capacity and its host memory graph (read
        # from the same statistics) would disagree. The test driver has no statistics.
        try:
            total_kib = int(conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0).get("total", 0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise vapor_error(exc) from exc
            total_kib = 0
        if total_kib > 0:
            memory_bytes = total_kib * 1024
        return HostResources(memory_bytes=memory_bytes, cpus=cpus, model=model, hostname=hostname)

    def max_vcpus(self, arch: str, virt_type: str, machine: str = "q35") -> int:
        """The most vCPUs one domain may have: QEMU's limit for the machine type, not the host's cores.

        Overcommit is normal (a 2-core host runs 8-vCPU guests). The domain
        capabilities know the machine type's limit; a driver without them
        (the test driver) answers `getMaxVcpus` for the domain type.
        """
        key = (arch, virt_type, machine)
        if key not in self._max_vcpus:
            conn = self._connection()
            try:
                limit = domain_max_vcpus(conn.getDomainCapabilities(None, arch, machine, virt_type, 0))
            except libvirt.libvirtError as exc:
                code, words = exc.get_error_code() or 0, exc.get_error_message() or str(exc)
                if code in (VIR_ERR_INVALID_ARG, VIR_ERR_CONFIG_UNSUPPORTED):
                    message = f"no {virt_type} domain of arch {arch}, machine {machine} here: {words}"
                    raise InvalidInput(message, field="architecture") from exc
                if code != VIR_ERR_NO_SUPPORT:
                    raise vapor_error(exc) from exc
                limit = None
            if limit is None:
                with calls():
                    limit = conn.getMaxVcpus(virt_type)
            self._max_vcpus[key] = limit
        return self._max_vcpus[key]

    def firmware_support(self, arch: str, virt_type: str) -> FirmwareSupport:
        """Whether UEFI (and Secure Boot) firmware and an emulated TPM are offered for q35 domains of `arch`
        and `virt_type`, from the domain capabilities; all None where the host cannot say (the test driver,
        an arch or type it does not run)."""
        conn = self._connection()
        try:
            document = conn.getDomainCapabilities(None, arch, "q35", virt_type, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (VIR_ERR_NO_SUPPORT, VIR_ERR_INVALID_ARG, VIR_ERR_CONFIG_UNSUPPORTED):
                raise vapor_error(exc) from exc
            return FirmwareSupport(uefi=None, secure_boot=None, tpm=None)
        return firmware_support(document)

    def bridge_exists(self, name: str) -> bool:
        """True when a Linux bridge `name` exists where libvirtd runs.

        Asked through libvirt's interface driver, because libvirtd may live in
        another network namespace (scripts/libvirtd.sh) where Vapor's own
        /sys shows other interfaces. Its udev backend reads sysfs and works
        without udevd. Only when a daemon has no interface driver does this
        fall back to /sys/class/net on Vapor's host, which is the right place
        only when both share a namespace.
        """
        validate_bridge_name(name)
        conn = self._connection()
        try:
            document = conn.interfaceLookupByName(name).XMLDesc(0)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == VIR_ERR_NO_INTERFACE:
                return False
            if code != VIR_ERR_NO_SUPPORT:
                raise vapor_error(exc, field="bridge") from exc
            return os.path.isdir(f"/sys/class/net/{name}/bridge")
        return interface_type(document) == "bridge"

    def list_bridges(self) -> list[str]:
        """The names of the Linux bridges where libvirtd runs, sorted (NAT networks' bridges, e.g. virbr0, included).

        Read like `bridge_exists`: libvirt's interface driver (its udev backend
        lists every interface, active or not, from sysfs), else /sys/class/net
        on Vapor's host when the daemon has no interface driver.
        """
        conn = self._connection()
        try:
            interfaces = conn.listAllInterfaces(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != VIR_ERR_NO_SUPPORT:
                raise vapor_error(exc, field="bridge") from exc
            return sorted(entry.name for entry in os.scandir("/sys/class/net") if os.path.isdir(f"{entry.path}/bridge"))
        with calls(field="bridge"):
            return sorted(i.name() for i in interfaces if interface_type(i.XMLDesc(0)) == "bridge")
