"""Metrics for the graphs (issue 13, point 8): sample once a minute, keep rates, downsample, read a span back.

`metrics_sample` is one round, run every minute by the worker (the schedule
of migration 0012) or by `manage.py sample_metrics`: ONE bulk statistics
call for every running domain and one for the host, then a fixed number of
queries whatever the number of VMs (read the last counters, read the VMs'
names, insert the samples, store the counters, roll up, drop). Rates are
computed from the counters the previous round stored (`MetricCounters`): a
domain seen for the first time, one whose counters went down (it restarted),
or a previous round too long ago gives no sample this round, never a
negative or smeared rate; the graph shows a gap there.

Retention: minute rows are kept `MINUTE_KEEP` (a bit more than the hour the
graphs show); after that, each complete ten-minute bucket is averaged into
one row and its minute rows deleted; every row is dropped after `DAY_KEEP`.
The host's disk and network I/O are its running guests' summed (libvirt
reports no host-wide figures).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import fmean
from typing import Any, Literal

from django.db import transaction
from django.utils import timezone

from vaporsite.errors import InvalidInput
from vms import hypervisor
from vms.hypervisor import DomainStats, HostStats, Hypervisor
from vms.models import HostMetricSample, MetricCounters, VirtualMachine, VmMetricSample

log = logging.getLogger("vapor.vms.metrics")

MINUTE = 60  # seconds: the sampling interval and the resolution of fresh rows
BUCKET = 600  # seconds: the resolution of rows older than MINUTE_KEEP
MINUTE_KEEP = timedelta(minutes=70)
DAY_KEEP = timedelta(hours=25)
MAX_INTERVAL = 3 * MINUTE  # previous counters older than this give no rate (the worker was away): a gap
SPANS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
RATE_FIELDS = ("cpu_percent", "memory_mib", "disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps")
COUNTERS = ("cpu_time_ns", "block_read_bytes", "block_write_bytes", "net_rx_bytes", "net_tx_bytes")
HOST_SCOPE, VMS_SCOPE = "host", "vms"

Span = Literal["hour", "day"]


@dataclass(frozen=True)
class Rates:
    """Averages over one interval: CPU in % (of the VM's vCPUs, of the host's CPUs), memory used in MiB, I/O in B/s."""

    cpu_percent: float
    memory_mib: float
    disk_read_bps: float
    disk_write_bps: float
    net_rx_bps: float
    net_tx_bps: float


@dataclass(frozen=True)
class SampleRound:
    """What one round did: running domains read, VM samples written (domains Vapor knows, with a previous reading)."""

    domains: int
    vm_samples: int
    host_sample: bool
    rolled_up: int  # minute rows averaged into ten-minute rows
    dropped: int


def _counters(stats: DomainStats) -> list[int]:
    return [getattr(stats, name) for name in COUNTERS]


def domain_rates(previous: Sequence[int] | None, stats: DomainStats, seconds: float) -> Rates | None:
    """The rates between `previous` counters and `stats`, `seconds` apart; None when there is no honest rate."""
    if previous is None or len(previous) != len(COUNTERS) or not 0 < seconds <= MAX_INTERVAL:
        return None
    deltas = [now - before for now, before in zip(_counters(stats), previous, strict=True)]
    if any(delta < 0 for delta in deltas):
        return None  # the domain started again since: its counters began from 0
    cpu, read, written, rx, tx = deltas
    cpu_percent = 100.0 * cpu / (seconds * 1e9 * max(stats.vcpus, 1))
    return Rates(min(cpu_percent, 100.0), stats.memory_used_kib / 1024, read / seconds, written / seconds, rx / seconds, tx / seconds)


def host_rates(previous: Sequence[int] | None, stats: HostStats, seconds: float, guests: Iterable[Rates]) -> Rates | None:
    """The host's CPU busy share between two readings, its memory in use, and its guests' I/O summed."""
    if previous is None or len(previous) != 2 or not 0 < seconds <= MAX_INTERVAL:
        return None
    busy, total = stats.cpu_busy_ns - previous[0], stats.cpu_total_ns - previous[1]
    if busy < 0 or total <= 0:
        return None
    guests = list(guests)
    return Rates(
        cpu_percent=min(100.0 * busy / total, 100.0),
        memory_mib=(stats.memory_total_kib - stats.memory_available_kib) / 1024,
        disk_read_bps=sum(r.disk_read_bps for r in guests),
        disk_write_bps=sum(r.disk_write_bps for r in guests),
        net_rx_bps=sum(r.net_rx_bps for r in guests),
        net_tx_bps=sum(r.net_tx_bps for r in guests),
    )


def _seconds_since(saved: MetricCounters | None, now: datetime) -> float:
    return (now - saved.at).total_seconds() if saved is not None else 0.0


def _bucket_end(at: datetime) -> datetime:
    """The end of the ten minutes a row ending at `at` falls in: (end - BUCKET, end]."""
    stamp = math.ceil(at.timestamp())
    return datetime.fromtimestamp(stamp + (-stamp) % BUCKET, tz=UTC)


def _cutoff(now: datetime) -> datetime:
    """Minute rows up to this (a bucket boundary) are rolled up: every bucket ending by then is complete."""
    stamp = int((now - MINUTE_KEEP).timestamp())
    return datetime.fromtimestamp(stamp - stamp % BUCKET, tz=UTC)


def _averaged(rows: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> dict[str, float]:
    return {name: fmean(row[name] for row in rows) for name in (*RATE_FIELDS, *extra)}


def _roll_up_vms(now: datetime) -> int:
    cutoff = _cutoff(now)
    old = VmMetricSample.objects.filter(resolution=MINUTE, at__lte=cutoff)
    groups: dict[tuple[int, datetime], list[dict[str, Any]]] = defaultdict(list)
    for row in old.values("vm_id", "at", *RATE_FIELDS):
        groups[(row["vm_id"], _bucket_end(row["at"]))].append(row)
    if not groups:
        return 0
    VmMetricSample.objects.bulk_create(
        VmMetricSample(vm_id=vm_id, at=at, resolution=BUCKET, **_averaged(rows)) for (vm_id, at), rows in groups.items()
    )
    old.delete()
    return sum(len(rows) for rows in groups.values())


def _roll_up_host(now: datetime) -> int:
    cutoff = _cutoff(now)
    old = HostMetricSample.objects.filter(resolution=MINUTE, at__lte=cutoff)
    groups: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for row in old.values("at", "memory_total_mib", *RATE_FIELDS):
        groups[_bucket_end(row["at"])].append(row)
    if not groups:
        return 0
    HostMetricSample.objects.bulk_create(
        HostMetricSample(at=at, resolution=BUCKET, **_averaged(rows, ("memory_total_mib",))) for at, rows in groups.items()
    )
    old.delete()
    return sum(len(rows) for rows in groups.values())


def metrics_sample(*, hv: Hypervisor | None = None, now: datetime | None = None) -> SampleRound:
    """One sampling round: read every running domain's counters and the host's, store rates, downsample, drop.

    Two hypervisor calls and a fixed number of queries, however many VMs run.
    """
    owned = hv is None
    hv = hv or hypervisor.get_hypervisor()
    try:
        domains = hv.domain_stats()
        host = hv.host_stats()
    finally:
        if owned:
            hv.close()
    now = now or timezone.now()
    with transaction.atomic():
        # Locked (on PostgreSQL; SQLite's write lock does it there): a forced round and the schedule's take turns.
        saved = {c.scope: c for c in MetricCounters.objects.select_for_update().filter(scope__in=(VMS_SCOPE, HOST_SCOPE))}
        vms_saved, host_saved = saved.get(VMS_SCOPE), saved.get(HOST_SCOPE)
        seconds = _seconds_since(vms_saved, now)
        previous = vms_saved.counters if vms_saved is not None else {}
        known = dict(VirtualMachine.objects.filter(name__in=[d.name for d in domains]).values_list("name", "pk"))
        rates: dict[str, Rates] = {}
        for stats in domains:
            rate = domain_rates(previous.get(stats.name), stats, seconds)
            if rate is not None:
                rates[stats.name] = rate
        VmMetricSample.objects.bulk_create(
            VmMetricSample(vm_id=known[name], at=now, resolution=MINUTE, **vars(rate)) for name, rate in rates.items() if name in known
        )
        host_previous = host_saved.counters.get(HOST_SCOPE) if host_saved is not None else None
        host_rate = host_rates(host_previous, host, _seconds_since(host_saved, now), rates.values())
        if host_rate is not None:
            HostMetricSample.objects.create(at=now, resolution=MINUTE, memory_total_mib=host.memory_total_kib / 1024, **vars(host_rate))
        MetricCounters.objects.bulk_create(
            [
                MetricCounters(scope=VMS_SCOPE, at=now, counters={d.name: _counters(d) for d in domains}),
                MetricCounters(scope=HOST_SCOPE, at=now, counters={HOST_SCOPE: [host.cpu_busy_ns, host.cpu_total_ns]}),
            ],
            update_conflicts=True,
            unique_fields=["scope"],
            update_fields=["at", "counters"],
        )
        rolled = _roll_up_vms(now) + _roll_up_host(now)
        dropped = VmMetricSample.objects.filter(at__lt=now - DAY_KEEP).delete()[0]
        dropped += HostMetricSample.objects.filter(at__lt=now - DAY_KEEP).delete()[0]
    done = SampleRound(len(domains), sum(1 for name in rates if name in known), host_rate is not None, rolled, dropped)
    log.debug("metrics round: %s", done)
    return done


# ---------------------------------------------------------------------------
# Reading a span back, for the graphs


@dataclass(frozen=True)
class Point:
    at: datetime  # the end of the interval the rates cover
    rates: Rates


@dataclass(frozen=True)
class MetricSeries:
    """The samples of one span, oldest first, each covering `resolution` seconds up to its `at`."""

    span: str
    start: datetime
    end: datetime
    resolution: int
    points: list[Point]
    memory_total_mib: float | None  # the ceiling of the memory graph: the VM's memory, the host's


def _span(span: str) -> timedelta:
    if span not in SPANS:
        raise InvalidInput(f"span must be one of {', '.join(SPANS)}, not {span!r}", field="span")
    return SPANS[span]


def _rates(row: dict[str, Any]) -> Rates:
    return Rates(**{name: float(row[name]) for name in RATE_FIELDS})


def _points(rows: Iterable[dict[str, Any]], span: str) -> list[Point]:
    """Rows oldest first; for a day, minute rows are averaged into ten-minute points like the stored ones."""
    if span == "hour":
        return [Point(row["at"], _rates(row)) for row in rows if row["resolution"] == MINUTE]
    buckets: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        buckets[row["at"] if row["resolution"] == BUCKET else _bucket_end(row["at"])].append(row)
    return [Point(at, Rates(**_averaged(members))) for at, members in sorted(buckets.items())]


def _rows(queryset: Any, span: str, now: datetime | None, *extra: str) -> tuple[datetime, datetime, list[dict[str, Any]]]:
    end = now or timezone.now()
    start = end - _span(span)
    rows = queryset.filter(at__gt=start, at__lte=end).order_by("at").values("at", "resolution", *RATE_FIELDS, *extra)
    return start, end, list(rows)


def _resolution(span: str) -> int:
    return MINUTE if span == "hour" else BUCKET


def metrics_series(*, vm: VirtualMachine, span: str, now: datetime | None = None) -> MetricSeries:
    """One VM's samples over the last hour (minute points) or day (ten-minute points). One query."""
    start, end, rows = _rows(VmMetricSample.objects.filter(vm_id=vm.pk), span, now)
    return MetricSeries(span, start, end, _resolution(span), _points(rows, span), float(vm.memory_mb))  # memory_mb is MiB to libvirt


def host_metrics_series(*, span: str, now: datetime | None = None) -> MetricSeries:
    """The host's samples over the last hour or day; the memory ceiling is the latest total in the span. One query."""
    start, end, rows = _rows(HostMetricSample.objects.all(), span, now, "memory_total_mib")
    total = float(rows[-1]["memory_total_mib"]) if rows else None
    return MetricSeries(span, start, end, _resolution(span), _points(rows, span), total)
