"""Host capabilities, bridges and the domain lifecycle through the driver,
against the real daemon (TCG guests with nothing to boot), checked with
`virsh` and the files libvirt keeps beside a definition."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import skip_or_fail_in_ci
from tests.integration.conftest import ScratchPool, remove_pool, unique, virsh
from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.libvirt

MIB = 1024**2
NVRAM_DIR = Path("/var/lib/libvirt/qemu/nvram")
SWTPM_DIR = Path("/var/lib/libvirt/swtpm")
NETNS_STATE = Path("/run/vapor/libvirtd.netns")


def tiny_domain(
    name: str,
    *,
    disk: str | None = None,
    uefi: bool = False,
    tpm: bool = False,
    memory_mib: int = 128,
    vnc_password: str | None = None,
) -> str:
    """A TCG domain with nothing to boot: enough for libvirt to run QEMU (and OVMF, swtpm)."""
    domain = etree.Element("domain", type="qemu")
    etree.SubElement(domain, "name").text = name
    etree.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    etree.SubElement(domain, "vcpu").text = "1"
    os_element = etree.SubElement(domain, "os", firmware="efi") if uefi else etree.SubElement(domain, "os")
    etree.SubElement(os_element, "type", arch="x86_64", machine="q35").text = "hvm"
    if uefi:
        firmware = etree.SubElement(os_element, "firmware")
        etree.SubElement(firmware, "feature", enabled="no", name="secure-boot")
        etree.SubElement(firmware, "feature", enabled="no", name="enrolled-keys")
    etree.SubElement(etree.SubElement(domain, "features"), "acpi")
    devices = etree.SubElement(domain, "devices")
    if disk:
        element = etree.SubElement(devices, "disk", type="file", device="disk")
        etree.SubElement(element, "driver", name="qemu", type="qcow2")
        etree.SubElement(element, "source", file=disk)
        etree.SubElement(element, "target", dev="vda", bus="virtio")
    if tpm:
        etree.SubElement(etree.SubElement(devices, "tpm", model="tpm-crb"), "backend", type="emulator", version="2.0")
    if vnc_password is not None:
        graphics = etree.SubElement(devices, "graphics", type="vnc", port="-1", passwd=vnc_password)
        etree.SubElement(graphics, "listen", type="address", address="127.0.0.1")
    return etree.tostring(domain, encoding="unicode")


@pytest.fixture(scope="module")
def guest_pool(hypervisor: LibvirtDriver) -> Iterator[ScratchPool]:
    """A pool QEMU can read: it runs as libvirt-qemu, and pytest's tmp dirs are root-only (0700)."""
    path = Path(tempfile.mkdtemp(prefix="h6-guests-", dir="/var/tmp"))
    path.chmod(0o711)
    pool = ScratchPool(name=unique("h6-guests"), path=path)
    try:
        hypervisor.ensure_dir_pool(pool.name, str(pool.path))
        yield pool
    finally:
        remove_pool(pool.name)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def domain_name() -> Iterator[Callable[[], str]]:
    """Hands out h6- domain names and removes those domains afterwards with virsh, whatever the driver did."""
    names: list[str] = []

    def make() -> str:
        names.append(unique("h6-dom"))
        return names[-1]

    yield make
    for name in names:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", "--tpm", "--managed-save", check=False)


def dominfo(name: str) -> dict[str, str]:
    lines = virsh("dominfo", name).stdout.splitlines()
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if value}


# Host


def test_capabilities_offer_x86_64_with_qemu_and_say_whether_kvm_is_there(hypervisor: LibvirtDriver):
    caps = hypervisor.capabilities()

    assert "qemu" in caps.arches["x86_64"]
    assert caps.host_arch == platform.machine()
    # An account independent of the parser: does virsh list a kvm domain for the host arch?
    root = etree.fromstring(virsh("capabilities").stdout.encode())
    offered = {
        domain.get("type")
        for guest in root.iterfind("guest")
        if guest.findtext("os_type") == "hvm"
        for arch in guest.iterfind("arch")
        if arch.get("name") == caps.host_arch
        for domain in arch.iterfind("domain")
    }
    assert caps.kvm == ("kvm" in offered)
    assert hypervisor.capabilities() is caps


def test_max_vcpus_is_the_machine_limit_not_the_core_count(hypervisor: LibvirtDriver):
    limit = hypervisor.max_vcpus("x86_64", "qemu")

    # The spec's examples ask for 4 and 8 vCPUs on a 2-core host.
    assert limit >= 8
    assert limit > (os.cpu_count() or 1)
    assert hypervisor.max_vcpus("x86_64", "qemu", "q35") == limit


def test_max_vcpus_for_a_machine_qemu_lacks_is_invalid_input(hypervisor: LibvirtDriver):
    with pytest.raises(InvalidInput, match="no-such-machine") as caught:
        hypervisor.max_vcpus("x86_64", "qemu", "no-such-machine")
    assert caught.value.field == "architecture"


@pytest.fixture
def netns_bridge() -> Iterator[str]:
    """A bridge inside libvirtd's network namespace, which Vapor's own /sys does not show."""
    netns = NETNS_STATE.read_text().strip() if NETNS_STATE.exists() else ""
    if not netns:
        # CI always starts libvirtd in its own namespace (scripts/test.sh); there this must not pass silently.
        skip_or_fail_in_ci("libvirtd was not started by scripts/libvirtd.sh in a private network namespace")
    name = "h6-br0"
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "add", name, "type", "bridge"], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "del", name], check=False, capture_output=True)


def test_bridge_in_libvirtds_namespace_exists_though_the_host_does_not_show_it(hypervisor: LibvirtDriver, netns_bridge: str):
    assert hypervisor.bridge_exists(netns_bridge) is True
    assert not Path(f"/sys/class/net/{netns_bridge}").exists()


def test_missing_bridge_and_an_interface_that_is_no_bridge_do_not_exist(hypervisor: LibvirtDriver):
    assert hypervisor.bridge_exists("h6-nobr") is False
    assert hypervisor.bridge_exists("lo") is False


def test_bridge_name_that_is_no_interface_name_is_refused(hypervisor: LibvirtDriver):
    with pytest.raises(InvalidInput) as caught:
        hypervisor.bridge_exists("../../etc")
    assert caught.value.field == "bridge"


# Domains


def test_domain_lifecycle_define_start_autostart_destroy(hypervisor: LibvirtDriver, guest_pool: ScratchPool, domain_name):
    name = domain_name()
    disk = hypervisor.create_volume(guest_pool.name, f"{name}.qcow2", 16 * MIB)

    domain_uuid = hypervisor.define_domain(tiny_domain(name, disk=disk.path))

    assert virsh("domuuid", name).stdout.strip() == domain_uuid
    assert hypervisor.domain_exists(name) is True
    assert name in hypervisor.list_domain_names()
    assert hypervisor.domain_state(name) == "shutoff"

    hypervisor.start_domain(name)
    hypervisor.start_domain(name)  # a task delivered twice
    assert hypervisor.domain_state(name) == dominfo(name)["State"] == "running"
    assert f"<source file='{disk.path}'" in hypervisor.domain_xml(name)

    hypervisor.set_autostart(name, True)
    assert (hypervisor.domain_autostart(name), dominfo(name)["Autostart"]) == (True, "enable")
    hypervisor.set_autostart(name, False)
    assert (hypervisor.domain_autostart(name), dominfo(name)["Autostart"]) == (False, "disable")

    hypervisor.destroy_domain(name)
    hypervisor.destroy_domain(name)  # not running: nothing to do
    assert (hypervisor.domain_state(name), dominfo(name)["State"]) == ("shutoff", "shut off")


def test_shutdown_and_reboot_of_a_stopped_domain_are_conflicts(hypervisor: LibvirtDriver, domain_name):
    name = domain_name()
    hypervisor.define_domain(tiny_domain(name))

    with pytest.raises(Conflict, match="not running"):
        hypervisor.shutdown_domain(name)
    with pytest.raises(Conflict, match="not running"):
        hypervisor.reboot_domain(name)


def test_defining_a_taken_name_is_a_conflict_and_keeps_the_first_definition(hypervisor: LibvirtDriver, domain_name):
    name = domain_name()
    first = hypervisor.define_domain(tiny_domain(name, memory_mib=128))

    with pytest.raises(Conflict, match="already exists") as caught:
        hypervisor.define_domain(tiny_domain(name, memory_mib=256))

    assert caught.value.field == "name"
    assert virsh("domuuid", name).stdout.strip() == first
    assert dominfo(name)["Max memory"] == f"{128 * 1024} KiB"


def test_invalid_domain_xml_is_refused_by_libvirts_schema(hypervisor: LibvirtDriver, domain_name):
    name = domain_name()
    document = tiny_domain(name).replace("<vcpu>1</vcpu>", "<vcpu>one</vcpu>")

    with pytest.raises(HypervisorError, match="vcpu|schema|XML"):
        hypervisor.define_domain(document)

    assert hypervisor.domain_exists(name) is False


def test_domain_xml_never_contains_the_vnc_password(hypervisor: LibvirtDriver, domain_name):
    name = domain_name()
    hypervisor.define_domain(tiny_domain(name, vnc_password="h6Secr3t"))

    assert "h6Secr3t" in virsh("dumpxml", name, "--security-info").stdout  # it is set
    assert "h6Secr3t" not in hypervisor.domain_xml(name)
    assert "h6Secr3t" not in hypervisor.domain_xml(name, inactive=True)


def test_undefine_of_a_running_uefi_tpm_domain_removes_nvram_and_tpm_state(hypervisor: LibvirtDriver, domain_name):
    name = domain_name()
    domain_uuid = hypervisor.define_domain(tiny_domain(name, uefi=True, tpm=True, memory_mib=256))
    hypervisor.start_domain(name)
    nvram, tpm_state = NVRAM_DIR / f"{name}_VARS.fd", SWTPM_DIR / domain_uuid
    assert nvram.is_file()
    assert tpm_state.is_dir()

    hypervisor.undefine_domain(name)

    assert hypervisor.domain_exists(name) is False
    assert name not in virsh("list", "--all", "--name").stdout.split()
    assert not nvram.exists()
    assert not tpm_state.exists()


def test_undefine_of_a_missing_domain_is_fine(hypervisor: LibvirtDriver, domain_name):
    gone, neighbour = domain_name(), domain_name()
    hypervisor.define_domain(tiny_domain(gone))
    hypervisor.define_domain(tiny_domain(neighbour))
    virsh("undefine", gone)  # removed behind the driver's back, as by an operator
    before = set(virsh("list", "--all", "--name").stdout.split())

    for name in (gone, unique("h6-never")):
        hypervisor.undefine_domain(name)  # no NotFound: a rollback or a delete may run twice

    assert set(virsh("list", "--all", "--name").stdout.split()) == before  # nothing else was touched
    assert neighbour in before and gone not in before
    assert hypervisor.domain_exists(gone) is False


def test_lifecycle_calls_on_a_missing_domain_are_not_found(hypervisor: LibvirtDriver):
    name = unique("h6-never")
    assert hypervisor.domain_exists(name) is False
    for call in (hypervisor.start_domain, hypervisor.destroy_domain, hypervisor.domain_state, hypervisor.domain_xml):
        with pytest.raises(NotFound, match="no domain"):
            call(name)


def test_drivers_without_domain_capabilities_or_undefine_flags_still_answer():
    """libvirt's in-process test driver lacks both; the fallbacks make it usable (and prove they run)."""
    with LibvirtDriver("test:///default") as driver:
        assert driver.max_vcpus("x86_64", "qemu") == driver._connection().getMaxVcpus("qemu")
        assert driver.list_domain_names() == ["test"]

        driver.undefine_domain("test")  # running, and the driver rejects NVRAM/TPM flags

        assert driver.list_domain_names() == []
