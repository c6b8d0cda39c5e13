"""The console record the adapter hands out (`Hypervisor.console`) and its two
readers, the VM detail endpoint and the admin page, which close the
connection they open."""

from __future__ import annotations

import dataclasses

import pytest

from tests.vms.test_domain_xml import example_1
from vms.hypervisor import ConsoleInfo
from vms.hypervisor.documents.domain import domain_xml, parse_console
from vms.hypervisor.specs import GraphicsSpec
from vms.models import VirtualMachine


def test_console_of_a_domain_with_a_password_says_so_without_the_password():
    spec = dataclasses.replace(example_1(), graphics=GraphicsSpec(type="spice", port=5905, listen="::1", password="s3cret"))
    console = parse_console(domain_xml(spec))
    assert console == ConsoleInfo(type="spice", listen="::1", port=5905, password_set=True)
    assert "s3cret" not in repr(console)


def test_console_port_is_none_until_libvirt_assigns_one():
    assert parse_console(domain_xml(example_1())) == ConsoleInfo(type="vnc", listen="127.0.0.1", port=None, password_set=False)


def test_a_headless_domain_has_an_empty_console():
    headless = domain_xml(dataclasses.replace(example_1(), graphics=None))
    assert parse_console(headless) == ConsoleInfo(type="", listen="", port=None, password_set=False)


def test_listen_address_comes_from_the_listen_element_when_the_attribute_is_absent():
    graphics = "<graphics type='vnc' port='5901' passwd=''><listen type='address' address='10.0.0.2'/></graphics>"
    document = f"<domain><devices>{graphics}</devices></domain>"
    assert parse_console(document) == ConsoleInfo(type="vnc", listen="10.0.0.2", port=5901, password_set=False)


@pytest.fixture
def running_vm(vm_api, hv, run_tasks) -> VirtualMachine:
    """A VM with a password whose console libvirt put on port 5907."""
    with run_tasks():
        response = vm_api.post(
            "/api/v1/virtualmachines/create-enhanced",
            {"name": "web", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "graphics": {"password": "pw123"}},
            format="json",
        )
    assert response.status_code == 202, response.json()
    domain = hv.domains["web"]
    domain.xml = domain.xml.replace('port="-1"', 'port="5907"')
    return VirtualMachine.objects.get(name="web")


def test_vm_detail_shows_the_assigned_port_and_closes_its_connection(vm_api, hv, running_vm: VirtualMachine):
    before = hv.calls["close"]
    body = vm_api.get(f"/api/v1/virtualmachines/{running_vm.pk}").json()
    assert (body["graphics"]["port"], hv.calls["console"]) == (5907, 1)
    assert hv.calls["close"] == before + 1


def test_vm_admin_page_shows_the_console_from_the_adapter_and_closes_its_connection(admin_client, hv, running_vm: VirtualMachine):
    before = hv.calls["close"]
    page = admin_client.get(f"/admin/vms/virtualmachine/{running_vm.pk}/change/").content.decode()
    assert "VNC on 127.0.0.1:5907 (password set)" in page and "pw123" not in page
    assert hv.calls["close"] == before + 1
