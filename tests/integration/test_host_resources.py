"""host_resources(): memory in bytes from the node's memory statistics (node info's without them), CPUs, model, host name."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from vms.hypervisor import HostResources
from vms.hypervisor.libvirt_driver import LibvirtDriver


def test_test_driver_host_is_read_from_node_info():
    # libvirt's in-process test driver describes a fixed host: 3 GiB, 16 i686 CPUs.
    with LibvirtDriver("test:///default") as driver:
        assert driver.host_resources() == HostResources(memory_bytes=3 * 2**30, cpus=16, model="i686", hostname=socket.gethostname())


@pytest.mark.libvirt
def test_real_host_matches_virsh_nodeinfo_and_the_kernels_memory_total(hypervisor: LibvirtDriver):
    nodeinfo = subprocess.run(["virsh", "-c", "qemu:///system", "nodeinfo"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"^([^:]+):\s+(.*)$", nodeinfo, re.M))
    memstats = subprocess.run(["virsh", "-c", "qemu:///system", "nodememstats"], capture_output=True, text=True, check=True).stdout
    total_kib = int(dict(re.findall(r"^(\w+)\s*:\s+(\d+) KiB$", memstats, re.M))["total"])
    resources = hypervisor.host_resources()
    # The kernel's MemTotal (virsh shows KiB), which is what /proc/meminfo says too.
    assert resources.memory_bytes == total_kib * 1024
    meminfo = dict(re.findall(r"^(\w+):\s+(\d+) kB$", Path("/proc/meminfo").read_text(), re.M))
    assert resources.memory_bytes == int(meminfo["MemTotal"]) * 1024
    assert resources.cpus == int(fields["CPU(s)"])
    assert resources.model == fields["CPU model"]
    assert resources.hostname
