"""`Hypervisor.console` against the real daemon: the port libvirt assigns at
start, and whether a password is set (read from the secure XML, which the
record never carries on).

Everything created here is named `h10-con-...` and removed again with `virsh`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.integration.conftest import unique, virsh
from tests.vms.test_domain_xml import example_1
from vms.hypervisor import ConsoleInfo
from vms.hypervisor.documents.domain import domain_xml
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.hypervisor.specs import GraphicsSpec

pytestmark = pytest.mark.libvirt


@pytest.fixture
def domain_name() -> Iterator[str]:
    name = unique("h10-con")
    yield name
    virsh("destroy", name, check=False)
    virsh("undefine", name, "--nvram", check=False)


def test_console_reports_the_assigned_port_and_a_password_without_carrying_it(hypervisor: LibvirtDriver, domain_name: str):
    spec = dataclasses.replace(
        example_1(), name=domain_name, memory_mib=128, virt_type="qemu", disks=(), nics=(), graphics=GraphicsSpec(password="c0nS3crt")
    )
    hypervisor.define_domain(domain_xml(spec))
    assert hypervisor.console(domain_name) == ConsoleInfo(type="vnc", listen="127.0.0.1", port=None, password_set=True)

    hypervisor.start_domain(domain_name)
    console = hypervisor.console(domain_name)

    assert (console.type, console.listen, console.password_set) == ("vnc", "127.0.0.1", True)
    assert console.port is not None and console.port >= 5900
    assert virsh("vncdisplay", domain_name).stdout.strip().endswith(f":{console.port - 5900}")  # virsh counts displays from 5900
    assert "c0nS3crt" not in repr(console)


def test_console_of_a_domain_without_a_password(hypervisor: LibvirtDriver, domain_name: str):
    spec = dataclasses.replace(example_1(), name=domain_name, memory_mib=128, virt_type="qemu", disks=(), nics=())
    hypervisor.define_domain(domain_xml(spec))
    assert hypervisor.console(domain_name).password_set is False
