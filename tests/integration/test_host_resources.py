"""host_resources() from libvirt's node info: memory in bytes (libvirt says MiB), CPUs, model, host name."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from vms.hypervisor import HostResources
from vms.hypervisor.libvirt_driver import LibvirtDriver


def test_test_driver_host_is_read_from_node_info():
    # libvirt's in-process test driver describes a fixed host: 3 GiB, 16 i686 CPUs.
    with LibvirtDriver("test:///default") as driver:
        assert driver.host_resources() == HostResources(memory_bytes=3 * 2**30, cpus=16, model="i686", hostname=socket.gethostname())


@pytest.mark.libvirt
def test_real_host_matches_virsh_nodeinfo(hypervisor: LibvirtDriver):
    nodeinfo = subprocess.run(["virsh", "-c", "qemu:///system", "nodeinfo"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"^([^:]+):\s+(.*)$", nodeinfo, re.M))
    resources = hypervisor.host_resources()
    # virsh shows KiB; the Python binding rounds down to MiB.
    assert resources.memory_bytes == int(fields["Memory size"].split()[0]) // 1024 * 2**20
    assert resources.cpus == int(fields["CPU(s)"])
    assert resources.model == fields["CPU model"]
    assert resources.hostname
