"""Statistics for the graphs (issue 13, point 8): every running domain's counters in ONE call, and the host's.

A mixin of `LibvirtDriver`. `domain_stats` is one `virConnectGetAllDomainStats`
for all running domains (state, CPU time, balloon, vCPUs, interfaces, block
devices), however many there are; `host_stats` is the node's CPU times and
memory (three calls; four on a driver without node memory statistics). Both return plain counters: turning them into rates is
the service's work (`vms.services.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import libvirt

from vms.hypervisor import DomainStats, HostStats
from vms.hypervisor._connection import Connection, calls, vapor_error
from vms.hypervisor.errors import VIR_ERR_NO_SUPPORT

STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
# Running domains only; NOWAIT: a domain whose monitor is busy with a job is answered
# without its monitor's figures instead of holding up the whole call.
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    return int(value) if isinstance(value, int | float) else 0


def _summed(record: Mapping[str, Any], group: str, field: str) -> int:
    return sum(_int(record, f"{group}.{i}.{field}") for i in range(_int(record, f"{group}.count")))


def memory_used_kib(record: Mapping[str, Any]) -> int:
    """What the guest uses: its own report when its balloon driver gives one, else QEMU's RSS, else its size."""
    available, unused = record.get("balloon.available"), record.get("balloon.unused")
    if isinstance(available, int) and isinstance(unused, int) and available >= unused:
        return available - unused
    return _int(record, "balloon.rss") or _int(record, "balloon.current")


def domain_stats_record(name: str, record: Mapping[str, Any]) -> DomainStats:
    """One domain's entry of the bulk answer, as a record (missing figures count as 0)."""
    return DomainStats(
        name=name,
        cpu_time_ns=_int(record, "cpu.time"),
        vcpus=_int(record, "vcpu.current") or 1,
        memory_kib=_int(record, "balloon.current"),
        memory_used_kib=memory_used_kib(record),
        block_read_bytes=_summed(record, "block", "rd.bytes"),
        block_write_bytes=_summed(record, "block", "wr.bytes"),
        net_rx_bytes=_summed(record, "net", "rx.bytes"),
        net_tx_bytes=_summed(record, "net", "tx.bytes"),
    )


class StatsMixin(Connection):
    """The bulk statistics calls the metrics sampler makes once a minute."""

    def domain_stats(self) -> list[DomainStats]:
        """Counters of every running domain, from one all-domain statistics call."""
        with calls():
            answer = self._connection().getAllDomainStats(STATS, FLAGS)
            return sorted((domain_stats_record(domain.name(), record) for domain, record in answer), key=lambda s: s.name)

    def host_stats(self) -> HostStats:
        """The node's CPU time summed over its CPUs and its memory, in one round of three calls."""
        conn = self._connection()
        with calls():
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
            info = conn.getInfo()  # [model, memory in MiB, cpus, ...]
        try:
            memory = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            total_kib = int(memory.get("total", 0))
            available_kib = sum(int(memory.get(k, 0)) for k in ("free", "buffers", "cached"))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != VIR_ERR_NO_SUPPORT:  # the test driver has no node memory statistics
                raise vapor_error(exc) from exc
            with calls():
                total_kib, available_kib = int(info[1]) * 1024, int(conn.getFreeMemory()) // 1024
        total = sum(int(v) for k, v in cpu.items() if k in ("kernel", "user", "idle", "iowait"))
        idle = int(cpu.get("idle", 0)) + int(cpu.get("iowait", 0))
        return HostStats(
            cpus=int(info[2]),
            cpu_busy_ns=total - idle,
            cpu_total_ns=total,
            memory_total_kib=total_kib,
            memory_available_kib=available_kib,
        )
