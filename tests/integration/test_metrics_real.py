"""The metrics' bulk statistics against real libvirt (issue 13, point 8): one all-domain call on the real daemon
reports a running TCG guest's CPU time, memory and disk reads, and a sampling round turns two readings into a
nonzero CPU sample; the in-process test driver answers the same calls (node memory through its fallback)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import unique, virsh
from tests.integration.vm_support import shared_dir
from tests.support.factories import VirtualMachineFactory
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.models import HostMetricSample, VmMetricSample
from vms.services.metrics import metrics_sample

MIB = 2**20


def _guest_xml(name: str, disk: Path) -> str:
    """32 MiB, one vCPU, TCG, one blank 1 MiB disk: SeaBIOS reads its first sector, finds nothing to boot and waits."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/><target dev='sda' bus='sata'/></disk>
    <memballoon model='virtio'/>
  </devices>
</domain>"""


@pytest.fixture
def guest() -> Iterator[str]:
    top = shared_dir("vapor-metrics-")
    name = unique("metrics-real")
    disk = top / "blank.img"
    disk.write_bytes(bytes(MIB))
    disk.chmod(0o644)
    xml = top / "guest.xml"
    xml.write_text(_guest_xml(name, disk))
    try:
        virsh("define", str(xml))
        virsh("start", name)
        yield name
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.libvirt
def test_one_bulk_call_reports_a_running_guest(hypervisor: LibvirtDriver, guest: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        stats = {s.name: s for s in hypervisor.domain_stats()}
        mine = stats[guest]
        if mine.block_read_bytes > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine.vcpus == 1
    assert mine.cpu_time_ns > 0
    assert mine.memory_kib == 32 * 1024  # the balloon's current size
    assert mine.memory_used_kib > 0
    assert mine.block_read_bytes >= 512  # SeaBIOS read the blank disk's first sector
    assert all(s.cpu_time_ns >= 0 for s in stats.values())
    host = hypervisor.host_stats()
    assert host.cpus >= 1 and 0 < host.cpu_busy_ns < host.cpu_total_ns
    assert 0 < host.memory_available_kib <= host.memory_total_kib


@pytest.mark.libvirt
@pytest.mark.django_db
def test_a_round_on_the_real_daemon_stores_a_nonzero_cpu_sample(hypervisor: LibvirtDriver, guest: str) -> None:
    vm = VirtualMachineFactory.create(name=guest, vcpus=1, memory_mb=32)
    assert metrics_sample(hv=hypervisor).vm_samples == 0  # the first reading
    time.sleep(3)
    done = metrics_sample(hv=hypervisor)
    assert done.vm_samples == 1 and done.host_sample
    sample = VmMetricSample.objects.get(vm=vm)
    assert 0 < sample.cpu_percent <= 100
    assert 0 < sample.memory_mib <= 64
    host = HostMetricSample.objects.get()
    assert 0 < host.cpu_percent <= 100 and 0 < host.memory_mib < host.memory_total_mib


def test_the_test_driver_answers_the_same_calls() -> None:
    with LibvirtDriver("test:///default") as driver:
        (stats,) = driver.domain_stats()  # its one running domain, "test"
        assert stats.name == "test" and stats.vcpus >= 1
        host = driver.host_stats()  # no node memory statistics there: total and free from node info
        assert host.cpus == 16 and host.memory_total_kib == 3 * 2**20
        assert 0 <= host.memory_available_kib <= host.memory_total_kib
