"""The driver's connection handling: URI from settings at call time, a clear
error when no daemon answers, and reconnection after close()."""

from __future__ import annotations

import dataclasses

import pytest
from django.conf import settings as django_settings

from vaporsite.errors import HypervisorError
from vms.hypervisor import get_hypervisor
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.libvirt


def test_default_uri_is_read_from_settings_when_connecting(settings):
    driver = LibvirtDriver()
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, libvirt_uri="test:///default")
    try:
        # libvirt's in-process test driver ships one pool, "default-pool".
        assert [pool.name for pool in driver.list_pools()] == ["default-pool"]
    finally:
        driver.close()


def test_unreachable_daemon_is_a_hypervisor_error_naming_the_uri(tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    with pytest.raises(HypervisorError, match="cannot connect to qemu\\+unix"):
        LibvirtDriver(uri).list_pools()


def test_closed_driver_reconnects_on_next_call(hypervisor: LibvirtDriver):
    driver = get_hypervisor("qemu:///system")
    first = driver.list_pools()
    driver.close()
    assert [p.name for p in driver.list_pools()] == [p.name for p in first]
    driver.close()
