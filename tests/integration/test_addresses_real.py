"""Guest addresses on the real daemon (issue 14, point 2): a Vapor-made guest on the NAT network `default` takes
a DHCP lease with busybox `udhcpc`; after a refresh (the VM page's button, the same read as the state schedule)
the API shows that address on its NIC with the source `lease`, and the agent channel Vapor put in its domain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.guest_vm import first_line, vapor_guest
from tests.integration.vm_support import VmEnv, wait_for
from vms import tasks
from vms.models import NetworkInterface

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db, pytest.mark.slow]


def test_a_guest_on_the_nat_network_shows_its_dhcp_lease_after_a_refresh(vm_api, admin_client, run_tasks, vm_env: VmEnv, shell_iso: Path):
    guest = vapor_guest(vm_api, run_tasks, vm_env, shell_iso, name="addresses-lease", networks=[{"type": "nat", "source": "default"}])
    try:
        nic = NetworkInterface.objects.get(vm=guest.vm)
        link = guest.check("ip link show eth0")
        assert nic.mac in link.lower(), f"the guest's eth0 is not the VM's NIC {nic.mac}:\n{link}"
        guest.check("ip link set eth0 up && udhcpc -i eth0 -n -q -t 10 -T 3 -s /usr/share/udhcpc/default.script", timeout=120)
        inet = first_line(guest.check("ip -4 -o addr show dev eth0"), r"inet (192\.168\.122\.\d+)/(\d+)")
        leased, prefix = inet[1], int(inet[2])

        tasks.refresh_vm_states()  # the state schedule's job
        assert NetworkInterface.objects.get(pk=nic.pk).addresses, "the schedule stored no address"
        NetworkInterface.objects.filter(pk=nic.pk).update(addresses=[])  # so the button's read is the one seen below
        response = admin_client.post(f"/admin/vms/virtualmachine/{guest.vm.pk}/refresh/", follow=True)
        assert response.status_code == 200 and "Read from the host: VM addresses-lease is running" in response.content.decode()

        body = vm_api.get(f"/api/v1/virtualmachines/{guest.vm.pk}").json()
        shown = body["networks"][0]["addresses"]
        assert {"address": leased, "prefix": prefix, "family": "ipv4", "source": "lease"} in shown, shown
        assert body["guest_agent"] == {"channel": True, "connected": False}  # the channel is there; no agent in this guest
        assert body["addresses_checked_at"] is not None
        page = admin_client.get(f"/admin/vms/virtualmachine/{guest.vm.pk}/change/").content.decode()
        assert re.search(rf"<code>{re.escape(leased)}/{prefix}</code>.*?DHCP lease", page, re.S), "the panel does not show the lease"
    finally:
        guest.close()


def test_a_stopped_guest_has_its_addresses_cleared(vm_api, run_tasks, vm_env: VmEnv, shell_iso: Path):
    guest = vapor_guest(vm_api, run_tasks, vm_env, shell_iso, name="addresses-stop")
    try:
        guest.check("ip link set eth0 up && udhcpc -i eth0 -n -q -t 10 -T 3 -s /usr/share/udhcpc/default.script", timeout=120)
        tasks.refresh_vm_states()
        nic = NetworkInterface.objects.get(vm=guest.vm)
        assert nic.addresses and nic.addresses[0]["source"] == "lease", nic.addresses
    finally:
        guest.close()
    assert vm_api.post(f"/api/v1/virtualmachines/{guest.vm.pk}/force-stop").status_code == 200
    wait_for(lambda: tasks.refresh_vm_states() >= 0 and not NetworkInterface.objects.get(pk=nic.pk).addresses, 30, "addresses cleared")
