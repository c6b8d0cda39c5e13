"""Guest addresses (issue 14, point 2): the state refresh reads every domain's agent channel and addresses in
one bulk call and stores them on the NIC rows; the API and the admin show the stored rows (never libvirt per
row, a fixed number of queries for 1 or many VMs); the VM page's Refresh button; the driver's reading of
libvirt's answers (lease, agent only when connected, ARP; each address once with its first source)."""

from __future__ import annotations

import re
from typing import Any

import libvirt
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from projects.access import Actor
from projects.models import AuditEntry
from tests.fakes import FakeDomain, FakeHypervisor
from tests.support.api import create_vm
from tests.support.factories import NetworkInterfaceFactory, VirtualMachineFactory
from tests.support.projects import join
from vaporsite.errors import Forbidden, HypervisorError
from vms.hypervisor import GuestAddress
from vms.hypervisor.addresses import AddressesMixin, addresses_from, agent_channel, merged
from vms.models import NetworkInterface, VirtualMachine
from vms.services.states import vm_refresh, vm_refresh_states

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/vms/virtualmachine/"
MAC = "52:54:00:aa:bb:01"
LEASE = GuestAddress(MAC, "192.168.122.50", 24, "ipv4", "lease")
AGENT_V6 = GuestAddress(MAC, "fd00::50", 64, "ipv6", "agent")
ARP_SAME = GuestAddress(MAC, "192.168.122.50", 0, "ipv4", "arp")
ARP_OTHER = GuestAddress("52:54:00:aa:bb:02", "10.0.0.9", 0, "ipv4", "arp")
CHANNEL = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='{}'/></channel>"
AGENT_XML = "<domain><name>{name}</name><devices>" + CHANNEL.format("disconnected") + "</devices></domain>"


def put(hv: FakeHypervisor, name: str, state: str = "running", *, addresses: tuple[GuestAddress, ...] = (), agent: bool = False) -> None:
    hv.domains[name] = FakeDomain(AGENT_XML.format(name=name), state=state, addresses=addresses, agent_connected=agent)


def machine(name: str, *macs: str, status: str = "running") -> VirtualMachine:
    vm = VirtualMachineFactory.create(name=name, memory_mb=512, status=status)
    for order, mac in enumerate(macs):
        NetworkInterfaceFactory.create(vm=vm, order=order, mac=mac)
    return vm


def stored(mac: str) -> list[dict[str, Any]]:
    return NetworkInterface.objects.get(mac=mac).addresses


# --- the refresh stores them ----------------------------------------------------------------------------


def test_the_refresh_stores_each_nics_addresses_with_their_source_and_the_agent_flags(hv):
    machine("web", MAC, "52:54:00:aa:bb:02")
    put(hv, "web", addresses=(ARP_SAME, AGENT_V6, LEASE, ARP_OTHER), agent=True)
    vm_refresh_states()
    assert stored(MAC) == [
        {"address": "192.168.122.50", "prefix": 24, "family": "ipv4", "source": "lease"},  # the lease wins over ARP
        {"address": "fd00::50", "prefix": 64, "family": "ipv6", "source": "agent"},
    ]
    assert stored("52:54:00:aa:bb:02") == [{"address": "10.0.0.9", "prefix": 0, "family": "ipv4", "source": "arp"}]
    vm = VirtualMachine.objects.get(name="web")
    assert (vm.guest_agent_channel, vm.guest_agent_connected) == (True, True)
    assert vm.addresses_checked_at == vm.state_checked_at is not None


def test_agent_addresses_only_while_an_agent_is_connected(hv):
    machine("web", MAC)
    put(hv, "web", addresses=(AGENT_V6,), agent=False)
    vm_refresh_states()
    assert stored(MAC) == []
    vm = VirtualMachine.objects.get(name="web")
    assert (vm.guest_agent_channel, vm.guest_agent_connected) == (True, False)


def test_a_stopped_or_vanished_domain_leaves_no_address_behind(hv):
    machine("web", MAC)
    put(hv, "web", addresses=(LEASE,))
    vm_refresh_states()
    assert stored(MAC)[0]["source"] == "lease"
    hv.domains["web"].state = "shutoff"
    vm_refresh_states()
    assert stored(MAC) == []
    put(hv, "web", addresses=(LEASE,))
    vm_refresh_states()
    del hv.domains["web"]
    vm_refresh_states()
    vm = VirtualMachine.objects.get(name="web")
    assert stored(MAC) == [] and vm.status == "missing" and not vm.guest_agent_connected


def test_a_failed_address_read_still_stores_the_states_and_keeps_the_last_addresses(hv, caplog):
    machine("web", MAC)
    put(hv, "web", addresses=(LEASE,))
    vm_refresh_states()
    first = VirtualMachine.objects.get(name="web").addresses_checked_at
    hv.fail["domain_addresses"] = HypervisorError("the agent hung")
    hv.domains["web"].state = "paused"
    vm_refresh_states()
    vm = VirtualMachine.objects.get(name="web")
    assert vm.state == "paused" and vm.addresses_checked_at == first
    assert stored(MAC)[0]["address"] == "192.168.122.50"
    assert "guest addresses not read: the agent hung" in caplog.text


def test_the_refresh_reads_addresses_in_one_call_for_any_number_of_vms(hv):
    for i in range(30):
        mac = f"52:54:00:00:01:{i:02x}"
        machine(f"vm{i}", mac)
        put(hv, f"vm{i}", addresses=(GuestAddress(mac, f"192.168.122.{i + 10}", 24, "ipv4", "lease"),))
    hv.calls.clear()
    vm_refresh_states()
    assert hv.calls["domain_addresses"] == 1 and hv.calls["list_domains"] == 1
    assert NetworkInterface.objects.get(mac="52:54:00:00:01:1d").addresses[0]["address"] == "192.168.122.39"


def test_a_refresh_of_some_vms_asks_only_for_those(hv):
    machine("web", MAC)
    machine("db", "52:54:00:aa:bb:02")
    put(hv, "web", addresses=(LEASE,))
    put(hv, "db", addresses=(ARP_OTHER,))
    asked: list[Any] = []
    real = hv.domain_addresses

    def spy(names: Any = None) -> Any:
        asked.append(sorted(names or []))
        return real(names)

    hv.domain_addresses = spy
    vm_refresh_states(ids=[VirtualMachine.objects.get(name="web").pk])
    assert asked == [["web"]]
    assert stored(MAC) != [] and stored("52:54:00:aa:bb:02") == []


# --- the API shows them -----------------------------------------------------------------------------------


def test_the_api_shows_addresses_per_nic_the_check_time_and_the_agent(vm_api, hv):
    machine("web", MAC)
    put(hv, "web", addresses=(LEASE, AGENT_V6), agent=True)
    vm_refresh_states()
    pk = VirtualMachine.objects.get(name="web").pk
    listed = vm_api.get("/api/v1/virtualmachines/").json()["virtualmachines"][0]
    detail = vm_api.get(f"/api/v1/virtualmachines/{pk}").json()
    for body in (listed, detail):
        assert body["networks"][0]["addresses"] == [
            {"address": "192.168.122.50", "prefix": 24, "family": "ipv4", "source": "lease"},
            {"address": "fd00::50", "prefix": 64, "family": "ipv6", "source": "agent"},
        ]
        assert body["guest_agent"] == {"channel": True, "connected": True}
        assert body["addresses_checked_at"] is not None
        assert {"mac", "type", "source", "model", "order"} <= body["networks"][0].keys()  # the old keys stay


def test_a_vm_never_checked_shows_empty_addresses_and_a_null_check_time(vm_api):
    machine("web", MAC)
    body = vm_api.get("/api/v1/virtualmachines/").json()["virtualmachines"][0]
    assert body["networks"][0]["addresses"] == [] and body["addresses_checked_at"] is None
    assert body["guest_agent"] == {"channel": False, "connected": False}


def _fleet(size: int, offset: int) -> None:
    for i in range(offset, offset + size):
        vm = VirtualMachineFactory.create(name=f"fleet{i:04d}", memory_mb=512, status="running")
        for order in range(2):
            address = {"address": f"10.{order}.{i // 250}.{i % 250}", "prefix": 24, "family": "ipv4", "source": "lease"}
            NetworkInterfaceFactory.create(vm=vm, order=order, addresses=[address])


def _list_queries(client: Any, url: str) -> int:
    client.get(url)  # the first request fills per-process caches (content types, permissions)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_the_api_list_with_addresses_costs_the_same_queries_for_1_or_25_vms(vm_api, django_assert_num_queries, monkeypatch):
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", lambda uri=None: pytest.fail("the list asked libvirt"))
    _fleet(1, 0)
    one = _list_queries(vm_api, "/api/v1/virtualmachines/")
    _fleet(24, 1)
    with django_assert_num_queries(one):
        body = vm_api.get("/api/v1/virtualmachines/").json()
    assert len(body["virtualmachines"]) == 25
    assert body["virtualmachines"][24]["networks"][1]["addresses"][0]["address"] == "10.1.0.24"


def test_the_admin_list_shows_the_ip_at_the_same_queries_for_1_or_25_vms(admin_client, django_assert_num_queries, monkeypatch):
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", lambda uri=None: pytest.fail("the list asked libvirt"))
    _fleet(1, 0)
    one = _list_queries(admin_client, CHANGELIST)
    _fleet(24, 1)
    with django_assert_num_queries(one):
        html = admin_client.get(CHANGELIST).content.decode()
    assert re.search(r'<small class="vapor-ip" title="IP addresses: 10\.0\.0\.24, 10\.1\.0\.24">10\.<wbr>0\.<wbr>0\.<wbr>24</small>', html)


# --- the VM page: panel and Refresh ---------------------------------------------------------------------


@pytest.fixture
def vm(vm_api, hv, run_tasks) -> VirtualMachine:
    made = create_vm(vm_api, run_tasks, {"name": "web", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    assert made.status == "running"
    return made


def refresh_url(vm: VirtualMachine) -> str:
    return f"{CHANGELIST}{vm.pk}/refresh/"


def member(role: str) -> Client:
    user = User.objects.create_user(f"{role}-addr", password=None, is_staff=True)
    join(user, role, None)
    client = Client()
    client.force_login(user)
    return client


def test_new_vms_get_the_guest_agent_channel(vm, hv):
    assert '<target type="virtio" name="org.qemu.guest_agent.0"/>' in hv.domains["web"].xml


def test_refresh_button_reads_state_and_addresses_and_the_panel_shows_them(vm, hv):
    operator = member("operator")
    mac = vm.nics.get().mac
    hv.domains["web"].addresses = (GuestAddress(mac, "192.168.122.77", 24, "ipv4", "lease"),)
    hv.domains["web"].agent_connected = True
    page = operator.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    assert 'id="vapor-refresh-form"' in page and "Not checked yet" in page and "no address known" in page
    hv.calls.clear()
    response = operator.post(refresh_url(vm), follow=True)
    html = response.content.decode()
    assert hv.calls["domain_addresses"] == 1 and hv.calls["list_domains"] == 1
    assert "Read from the host: VM web is running, 1 address(es)." in html
    panel = re.search(r'<fieldset class="module aligned vapor-addresses".*?</fieldset>', html, re.S)
    assert panel is not None
    assert "192.168.122.77/24" in panel[0] and "DHCP lease" in panel[0] and "Checked at" in panel[0]
    assert "guest agent: connected" in panel[0]
    assert VirtualMachine.objects.get(pk=vm.pk).addresses_checked_at is not None


def test_refresh_is_post_only_and_refused_to_a_viewer(vm, hv):
    viewer = member("viewer")
    assert 'id="vapor-refresh-form"' not in viewer.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    hv.calls.clear()
    assert viewer.post(refresh_url(vm)).status_code == 403
    assert member("operator").get(refresh_url(vm)).status_code == 405
    assert sum(hv.calls.values()) == 0
    assert VirtualMachine.objects.get(pk=vm.pk).addresses_checked_at is None


# --- the driver's reading of libvirt's answers --------------------------------------------------------------


def test_libvirts_answer_becomes_records_without_loopback_and_with_families():
    answer = {
        "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"type": libvirt.VIR_IP_ADDR_TYPE_IPV4, "addr": "127.0.0.1", "prefix": 8}]},
        "eth0": {"hwaddr": "52:54:00:AA:BB:01", "addrs": [
            {"type": libvirt.VIR_IP_ADDR_TYPE_IPV4, "addr": "192.168.122.50", "prefix": 24},
            {"type": libvirt.VIR_IP_ADDR_TYPE_IPV6, "addr": "fd00::50", "prefix": 64},
        ]},
    }  # fmt: skip
    assert addresses_from("agent", answer) == [
        GuestAddress(MAC, "192.168.122.50", 24, "ipv4", "agent"),
        GuestAddress(MAC, "fd00::50", 64, "ipv6", "agent"),
    ]
    assert merged([ARP_SAME, LEASE, AGENT_V6]) == (ARP_SAME, AGENT_V6)  # first come, first kept


def test_the_channel_and_its_connection_are_read_from_the_live_xml():
    assert agent_channel("<domain><devices>" + CHANNEL.format("connected") + "</devices></domain>") == (True, True)
    assert agent_channel("<domain><devices>" + CHANNEL.format("disconnected") + "</devices></domain>") == (True, False)
    assert agent_channel("<domain><devices/></domain>") == (False, False)


class _Domain:
    def __init__(self, name: str, *, active: bool, state: str, answers: dict[int, Any]) -> None:
        self._name, self._active, self._state, self.answers = name, active, state, answers
        self.asked: list[int] = []

    def name(self) -> str:
        return self._name

    def isActive(self) -> int:
        return int(self._active)

    def XMLDesc(self, flags: int) -> str:
        return "<domain><devices>" + CHANNEL.format(self._state) + "</devices></domain>"

    def interfaceAddresses(self, source: int, flags: int) -> Any:
        self.asked.append(source)
        answer = self.answers.get(source)
        if isinstance(answer, Exception):
            raise answer
        return answer


class _Driver(AddressesMixin):
    def __init__(self, domains: list[_Domain]) -> None:
        self.domains = domains

    def _connection(self) -> Any:
        outer = self

        class Conn:
            def listAllDomains(self, flags: int) -> list[_Domain]:
                return outer.domains

        return Conn()


def _answer(address: str, prefix: int = 24) -> dict[str, Any]:
    return {"vnet0": {"hwaddr": MAC, "addrs": [{"type": libvirt.VIR_IP_ADDR_TYPE_IPV4, "addr": address, "prefix": prefix}]}}


LEASE_SRC = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
AGENT_SRC = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
ARP_SRC = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP


def test_the_driver_asks_lease_then_agent_only_when_connected_then_arp_and_skips_a_failing_source():
    silent = _Domain("silent", active=True, state="disconnected", answers={LEASE_SRC: _answer("192.168.122.5"), ARP_SRC: {}})
    answers = {LEASE_SRC: libvirt.libvirtError("no lease file"), AGENT_SRC: _answer("192.168.122.6"), ARP_SRC: _answer("192.168.122.6", 0)}
    talking = _Domain("talking", active=True, state="connected", answers=answers)
    stopped = _Domain("stopped", active=False, state="", answers={})
    read = {d.name: d for d in _Driver([silent, talking, stopped]).domain_addresses()}
    assert silent.asked == [LEASE_SRC, ARP_SRC] and talking.asked == [LEASE_SRC, AGENT_SRC, ARP_SRC] and stopped.asked == []
    assert read["silent"].addresses == (GuestAddress(MAC, "192.168.122.5", 24, "ipv4", "lease"),)
    assert read["talking"].addresses == (GuestAddress(MAC, "192.168.122.6", 24, "ipv4", "agent"),)
    assert (read["talking"].channel, read["talking"].connected, read["silent"].connected) == (True, True, False)
    assert read["stopped"].addresses == () and not read["stopped"].connected
    only = _Driver([silent, talking, stopped]).domain_addresses(["talking"])
    assert [d.name for d in only] == ["talking"]


def test_the_refresh_service_needs_an_operator_of_the_vms_project(vm, hv):
    viewer = User.objects.create_user("viewer-svc", password=None, is_staff=True)
    join(viewer, "viewer", None)
    hv.calls.clear()
    with pytest.raises(Forbidden):
        vm_refresh(vm=vm, actor=Actor(user=viewer, via="admin"))
    assert sum(hv.calls.values()) == 0 and not AuditEntry.objects.filter(action="vm.refresh").exists()
    operator = User.objects.create_user("operator-svc", password=None, is_staff=True)
    join(operator, "operator", None)
    assert vm_refresh(vm=vm, actor=Actor(user=operator, via="admin")).addresses_checked_at is not None
    assert AuditEntry.objects.filter(action="vm.refresh", username="operator-svc", vm_id=vm.pk).count() == 1
