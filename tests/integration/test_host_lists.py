"""The create page's host reads against the real daemon: bridges (libvirt's interface driver, no netcf
needed) and each pool's type."""

from __future__ import annotations

import pytest

from tests.integration.conftest import ScratchPool, virsh
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.libvirt


def test_list_bridges_names_the_nat_network_s_bridge_and_only_bridges(hypervisor: LibvirtDriver):
    bridge = virsh("net-info", "default").stdout.split("Bridge:")[1].split()[0]
    bridges = hypervisor.list_bridges()
    assert bridge in bridges and bridges == sorted(bridges)
    assert "lo" not in bridges  # an ethernet interface, not a bridge
    assert all(hypervisor.bridge_exists(name) for name in bridges)


def test_each_pool_says_its_type(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    pools = {pool.name: pool for pool in hypervisor.list_pools()}
    assert pools[scratch_pool.name].type == "dir"
    assert hypervisor.pool(scratch_pool.name).type == "dir"
