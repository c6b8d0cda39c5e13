"""Metrics sampling (issue 13, point 8) with the in-memory hypervisor: rates from counters, restarts, downsampling,
dropping, a constant number of queries, the series the graphs read, the task, the command and the schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import Schedule

from tests.fakes import FakeDomain, FakeHypervisor, zero_counters
from tests.support.factories import VirtualMachineFactory
from vaporsite.errors import InvalidInput
from vms import tasks
from vms.hypervisor import DomainStats
from vms.hypervisor.stats import domain_stats_record, memory_used_kib
from vms.models import HostMetricSample, VirtualMachine, VmMetricSample
from vms.services.metrics import (
    BUCKET,
    MINUTE,
    domain_rates,
    host_metrics_series,
    metrics_sample,
    metrics_series,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
GB = 10**9


def _running(hv: FakeHypervisor, name: str, *, vcpus: int = 1, vm: bool = True) -> VirtualMachine | None:
    hv.domains[name] = FakeDomain(xml=f"<domain><name>{name}</name></domain>")
    hv.start_domain(name)
    hv.advance(name, vcpus=vcpus)
    return VirtualMachineFactory.create(name=name, vcpus=vcpus) if vm else None


def _minutes(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def test_the_first_round_stores_counters_and_the_second_rates(hv: FakeHypervisor) -> None:
    vm = _running(hv, "web")
    assert metrics_sample(hv=hv, now=T0).vm_samples == 0  # nothing to compare with yet
    hv.advance("web", cpu_time_ns=30 * GB, block_read_bytes=6_000_000, block_write_bytes=600, net_rx_bytes=120, net_tx_bytes=60)
    hv.advance("web", memory_used_kib=512 * 1024)
    done = metrics_sample(hv=hv, now=_minutes(1))
    assert done.vm_samples == 1 and done.domains == 1
    sample = VmMetricSample.objects.get(vm=vm)
    assert (sample.at, sample.resolution) == (_minutes(1), MINUTE)
    assert sample.cpu_percent == pytest.approx(50.0)  # 30 s of CPU in 60 s on one vCPU
    assert sample.memory_mib == pytest.approx(512)
    assert (sample.disk_read_bps, sample.disk_write_bps) == (pytest.approx(100_000), pytest.approx(10))
    assert (sample.net_rx_bps, sample.net_tx_bps) == (pytest.approx(2), pytest.approx(1))


def test_cpu_is_a_share_of_the_vms_vcpus(hv: FakeHypervisor) -> None:
    vm = _running(hv, "wide", vcpus=4)
    metrics_sample(hv=hv, now=T0)
    hv.advance("wide", cpu_time_ns=60 * GB)  # one of four vCPUs busy for the minute
    metrics_sample(hv=hv, now=_minutes(1))
    assert VmMetricSample.objects.get(vm=vm).cpu_percent == pytest.approx(25.0)


def test_a_restart_gives_a_gap_never_a_negative_rate(hv: FakeHypervisor) -> None:
    vm = _running(hv, "web")
    hv.advance("web", cpu_time_ns=500 * GB, net_rx_bytes=10**9)
    metrics_sample(hv=hv, now=T0)
    hv.destroy_domain("web")
    hv.start_domain("web")  # counters begin again from 0
    hv.advance("web", cpu_time_ns=GB)
    assert metrics_sample(hv=hv, now=_minutes(1)).vm_samples == 0
    hv.advance("web", cpu_time_ns=6 * GB)
    assert metrics_sample(hv=hv, now=_minutes(2)).vm_samples == 1
    assert VmMetricSample.objects.get(vm=vm).cpu_percent == pytest.approx(10.0)
    assert not VmMetricSample.objects.filter(cpu_percent__lt=0).exists()


def test_counters_from_too_long_ago_give_no_rate(hv: FakeHypervisor) -> None:
    _running(hv, "web")
    metrics_sample(hv=hv, now=T0)
    hv.advance("web", cpu_time_ns=60 * GB)
    assert metrics_sample(hv=hv, now=_minutes(10)).vm_samples == 0  # the worker was away: a gap, not a 10-minute smear
    assert not HostMetricSample.objects.exists()


def test_rates_reject_a_shrinking_counter_and_no_elapsed_time() -> None:
    now = zero_counters("x")
    assert domain_rates([1, 0, 0, 0, 0], now, 60) is None
    assert domain_rates([0, 0, 0, 0, 0], now, 0) is None
    assert domain_rates(None, now, 60) is None
    assert domain_rates([0, 0, 0, 0, 0], now, 60) is not None


def test_domains_vapor_does_not_know_count_for_the_host_only(hv: FakeHypervisor) -> None:
    _running(hv, "foreign", vm=False)
    vm = _running(hv, "ours")
    hv.advance_host(busy_ns=0, idle_ns=0)
    metrics_sample(hv=hv, now=T0)
    hv.advance("foreign", block_write_bytes=60_000)
    hv.advance("ours", block_write_bytes=6_000, net_tx_bytes=600)
    hv.advance_host(busy_ns=30 * GB, idle_ns=90 * GB, available_kib=4 * 2**20)
    done = metrics_sample(hv=hv, now=_minutes(1))
    assert done.vm_samples == 1 and done.host_sample
    assert list(VmMetricSample.objects.values_list("vm_id", flat=True)) == [vm.pk]  # type: ignore[union-attr]
    host = HostMetricSample.objects.get()
    assert host.cpu_percent == pytest.approx(25.0)  # 30 s busy of 120 s of CPU time
    assert host.memory_mib == pytest.approx(12 * 1024)  # 16 GiB total, 4 GiB available
    assert host.memory_total_mib == pytest.approx(16 * 1024)
    assert host.disk_write_bps == pytest.approx(1100)  # both guests
    assert host.net_tx_bps == pytest.approx(10)


def test_minute_rows_are_averaged_into_ten_minute_rows_after_the_hour_and_dropped_after_the_day(hv: FakeHypervisor) -> None:
    vm = _running(hv, "web")
    for minute in range(0, 91):
        if minute:
            hv.advance("web", cpu_time_ns=(minute % 10) * 6 * GB)  # 0 %, 10 %, ... 90 %: each bucket averages 45 %
            hv.advance_host(busy_ns=GB, idle_ns=GB)
        metrics_sample(hv=hv, now=_minutes(minute))
    now = _minutes(90)
    minute_rows = VmMetricSample.objects.filter(vm=vm, resolution=MINUTE)
    buckets = VmMetricSample.objects.filter(vm=vm, resolution=BUCKET).order_by("at")
    oldest_minute = min(minute_rows.values_list("at", flat=True))
    assert oldest_minute > now - timedelta(minutes=80)  # older minute rows are gone...
    assert [b.at for b in buckets] == [_minutes(10), _minutes(20)]  # ...averaged per complete ten minutes
    first = buckets[0]
    assert first.cpu_percent == pytest.approx(45.0)  # the minutes ending 09:01 ... 09:10: 10 %, ... 90 %, 0 %
    assert buckets[1].cpu_percent == pytest.approx(45.0)
    assert HostMetricSample.objects.filter(resolution=BUCKET).count() == 2
    # A day and more later: everything older than the day is dropped.
    metrics_sample(hv=hv, now=now + timedelta(hours=25, minutes=10))
    assert not VmMetricSample.objects.filter(at__lt=now).exists()
    assert not HostMetricSample.objects.filter(at__lt=now).exists()


def _queries_for_a_round(hv: FakeHypervisor, count: int, tag: str) -> int:
    for i in range(count):
        _running(hv, f"{tag}-{i:03d}")
    metrics_sample(hv=hv, now=T0)
    for i in range(count):
        hv.advance(f"{tag}-{i:03d}", cpu_time_ns=GB, block_read_bytes=1000)
    calls_before = hv.calls["domain_stats"]
    with CaptureQueriesContext(connection) as queries:
        done = metrics_sample(hv=hv, now=_minutes(1))
    assert done.vm_samples == count
    assert hv.calls["domain_stats"] == calls_before + 1  # one bulk call for every domain
    return len(queries)


def test_a_round_costs_the_same_queries_for_10_and_100_vms(hv: FakeHypervisor, tmp_path) -> None:
    ten = _queries_for_a_round(hv, 10, "small")
    VirtualMachine.objects.all().delete()
    many = FakeHypervisor(pool_dir=tmp_path)
    from vms.models import MetricCounters

    MetricCounters.objects.all().delete()
    hundred = _queries_for_a_round(many, 100, "big")
    assert ten == hundred


def test_series_of_the_hour_and_of_the_day(hv: FakeHypervisor) -> None:
    vm = _running(hv, "web")
    assert vm is not None
    for minute in range(0, 81):
        if minute:
            hv.advance("web", cpu_time_ns=12 * GB, memory_used_kib=300 * 1024)
        metrics_sample(hv=hv, now=_minutes(minute))
    now = _minutes(80)
    hour = metrics_series(vm=vm, span="hour", now=now)
    assert hour.resolution == MINUTE and len(hour.points) == 60
    assert hour.points[-1].at == now and hour.points[-1].rates.cpu_percent == pytest.approx(20.0)
    assert hour.memory_total_mib == vm.memory_mb
    day = metrics_series(vm=vm, span="day", now=now)
    assert day.resolution == BUCKET
    assert [p.at for p in day.points] == [_minutes(m) for m in range(10, 81, 10)]  # stored buckets, then fresh minutes averaged
    assert all(p.rates.memory_mib == pytest.approx(300) for p in day.points)
    assert host_metrics_series(span="hour", now=now).points == []  # the host stood still: its CPU total never moved
    with pytest.raises(InvalidInput) as error:
        metrics_series(vm=vm, span="week")
    assert error.value.field == "span"


def test_the_task_and_the_command_run_a_round(hv: FakeHypervisor) -> None:
    vm = _running(hv, "web")
    assert tasks.sample_metrics() == 0
    out = StringIO()
    hv.advance("web", cpu_time_ns=GB)
    call_command("sample_metrics", "--rounds", "2", "--interval", "0.05", stdout=out)
    assert "round 2: 1 running domains, 1 VM samples" in out.getvalue()
    assert VmMetricSample.objects.filter(vm=vm).count() >= 1
    with pytest.raises(CommandError, match="--interval"):
        call_command("sample_metrics", "--interval", "0")
    with pytest.raises(CommandError, match="--rounds"):
        call_command("sample_metrics", "--rounds", "0")


def test_the_migration_schedules_a_round_every_minute() -> None:
    schedule = Schedule.objects.get(func="vms.tasks.sample_metrics")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == ("I", 1, -1)


def test_deleting_a_vm_deletes_its_samples(hv: FakeHypervisor) -> None:
    vm = _running(hv, "web")
    assert vm is not None
    metrics_sample(hv=hv, now=T0)
    hv.advance("web", cpu_time_ns=GB)
    metrics_sample(hv=hv, now=_minutes(1))
    vm.delete()
    assert not VmMetricSample.objects.exists()


def test_a_domains_entry_of_the_bulk_answer_sums_its_devices() -> None:
    record = {
        "cpu.time": 7 * GB,
        "vcpu.current": 2,
        "balloon.current": 1024 * 1024,
        "balloon.rss": 700 * 1024,
        "block.count": 2,
        "block.0.rd.bytes": 100,
        "block.0.wr.bytes": 10,
        "block.1.rd.bytes": 200,
        "block.1.wr.bytes": 20,
        "net.count": 2,
        "net.0.rx.bytes": 1,
        "net.0.tx.bytes": 2,
        "net.1.rx.bytes": 30,
        "net.1.tx.bytes": 40,
    }
    stats = domain_stats_record("web", record)
    assert stats == DomainStats("web", 7 * GB, 2, 1024 * 1024, 700 * 1024, 300, 30, 31, 42)
    # The guest's own figure wins when its balloon driver reports one; without anything, the balloon's size.
    assert memory_used_kib({**record, "balloon.available": 1000 * 1024, "balloon.unused": 600 * 1024}) == 400 * 1024
    assert memory_used_kib({"balloon.current": 512}) == 512
    assert domain_stats_record("bare", {}).vcpus == 1  # a domain answered without its vCPU group (NOWAIT) still divides by one
