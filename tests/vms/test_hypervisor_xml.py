"""Golden tests for the pool/volume/network XML builders and the readers of
what libvirt reports (vms/hypervisor/documents/). Pure: no libvirt, no database.

The readers are fed documents captured from the real daemon (libvirt 9.0,
QEMU 7.2) in tests/data/hypervisor/: `virsh capabilities`, `virsh
domcapabilities --virttype qemu --machine q35` and `virsh iface-dumpxml`.
The name rules and the error mapping are in test_hypervisor_errors.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from vaporsite.errors import InvalidInput
from vms.hypervisor import HostCapabilities
from vms.hypervisor.documents import DocumentError, capabilities, domain, interface, network, parse_file, pool, volume

GIB = 1024**3

DIR_POOL = """\
<pool type="dir">
  <name>default</name>
  <target>
    <path>/var/lib/libvirt/images</path>
  </target>
</pool>
"""

QCOW2_VOLUME = """\
<volume>
  <name>disk-1.qcow2</name>
  <capacity unit="bytes">1073741824</capacity>
  <allocation unit="bytes">0</allocation>
  <target>
    <format type="qcow2"/>
    <compat>1.1</compat>
  </target>
</volume>
"""

DEFAULT_NETWORK = """\
<network>
  <name>default</name>
  <forward mode="nat"/>
  <bridge name="virbr0" stp="on" delay="0"/>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.122.2" end="192.168.122.254"/>
    </dhcp>
  </ip>
</network>
"""

# What `virsh net-dumpxml default` printed for libvirt 9.0's own default network.
LIBVIRT_DEFAULT_NETWORK = """\
<network>
  <name>default</name>
  <uuid>8c7553b6-3f59-4315-a069-355d1ae418e8</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:42:a8:05'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""

HOSTILE = "x</name><target><path>/etc</path></target><name>&amp;'\"&<>"

# An overlay is the plain qcow2 volume plus the file it reads through and that file's format.
LINKED_CLONE = QCOW2_VOLUME.replace(
    "</volume>\n",
    """\
  <backingStore>
    <path>/srv/templates/debian-12.img</path>
    <format type="raw"/>
  </backingStore>
</volume>
""",
)

DATA = Path(__file__).resolve().parent.parent / "data"


def test_dir_pool_xml_matches_golden_document():
    assert pool.dir_pool_xml("default", "/var/lib/libvirt/images") == DIR_POOL


def test_qcow2_volume_is_thin_and_states_its_format():
    assert volume.volume_xml("disk-1.qcow2", GIB) == QCOW2_VOLUME


def test_raw_volume_states_raw_format():
    root = etree.fromstring(volume.volume_xml("data.img", 5 * GIB, "raw"))
    assert root.xpath("string(target/format/@type)") == "raw"
    assert root.findtext("capacity") == str(5 * GIB)
    assert root.findtext("allocation") == "0"


def test_volume_format_outside_the_allowed_list_is_refused():
    with pytest.raises(InvalidInput) as caught:
        volume.volume_xml("disk.vmdk", GIB, "vmdk")
    assert caught.value.field == "format"


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5, "1073741824"])
def test_volume_capacity_must_be_a_positive_whole_number_of_bytes(capacity):
    with pytest.raises(InvalidInput) as caught:
        volume.volume_xml("disk.qcow2", capacity)
    assert caught.value.field == "capacity"


def test_full_copy_target_is_a_plain_thin_volume_in_compat_1_1():
    assert volume.clone_volume_xml("disk-1.qcow2", GIB) == QCOW2_VOLUME


def test_full_copy_into_raw_has_no_qcow2_compat_and_no_backing_file():
    root = etree.fromstring(volume.clone_volume_xml("copy.img", 3 * GIB, "raw"))
    assert root.xpath("string(target/format/@type)") == "raw"
    assert root.find("target/compat") is None
    assert root.find("backingStore") is None


def test_linked_clone_is_a_qcow2_overlay_naming_its_backing_file_and_format():
    document = volume.clone_volume_xml("disk-1.qcow2", GIB, backing_path="/srv/templates/debian-12.img", backing_format="raw")
    assert document == LINKED_CLONE


def test_linked_clone_of_a_qcow2_template_states_qcow2_for_the_backing_file():
    root = etree.fromstring(volume.clone_volume_xml("vm-2.qcow2", GIB, backing_path="/srv/t.qcow2", backing_format="qcow2"))
    assert (root.findtext("backingStore/path"), root.xpath("string(backingStore/format/@type)")) == ("/srv/t.qcow2", "qcow2")


def test_linked_clone_into_raw_is_refused_because_raw_has_no_backing_file():
    with pytest.raises(InvalidInput, match="qcow2 overlay") as caught:
        volume.clone_volume_xml("vm.img", GIB, "raw", backing_path="/srv/t.qcow2", backing_format="qcow2")
    assert caught.value.field == "format"


@pytest.mark.parametrize("backing_format", [None, "", "vmdk", "QCOW2"])
def test_linked_clone_without_a_known_backing_format_is_refused_so_qemu_never_probes(backing_format):
    with pytest.raises(InvalidInput, match="backing format") as caught:
        volume.clone_volume_xml("vm.qcow2", GIB, backing_path="/srv/t.img", backing_format=backing_format)
    assert caught.value.field == "format"


@pytest.mark.parametrize(("fmt", "capacity", "field"), [("vmdk", GIB, "format"), ("qcow2", 0, "capacity"), ("qcow2", True, "capacity")])
def test_clone_target_follows_the_volume_rules(fmt, capacity, field):
    with pytest.raises(InvalidInput) as caught:
        volume.clone_volume_xml("vm.qcow2", capacity, fmt, backing_path="/srv/t.img", backing_format="raw")
    assert caught.value.field == field


def test_nat_network_xml_matches_libvirts_default_network():
    assert network.nat_network_xml("default", "virbr0", "192.168.122.0/24") == DEFAULT_NETWORK


@pytest.mark.parametrize(
    ("cidr", "gateway", "netmask", "first", "last"),
    [
        ("192.168.231.0/24", "192.168.231.1", "255.255.255.0", "192.168.231.2", "192.168.231.254"),
        ("10.9.0.0/16", "10.9.0.1", "255.255.0.0", "10.9.0.2", "10.9.255.254"),
        ("192.168.5.8/30", "192.168.5.9", "255.255.255.252", "192.168.5.10", "192.168.5.10"),
    ],
)
def test_nat_layout_gives_gateway_first_host_and_dhcp_the_rest(cidr, gateway, netmask, first, last):
    assert network.nat_layout(cidr) == network.NatLayout(gateway=gateway, netmask=netmask, dhcp_start=first, dhcp_end=last)


@pytest.mark.parametrize("cidr", ["192.168.1.1/24", "192.168.1.0/31", "fd00::/64", "not-a-network", ""])
def test_nat_network_refuses_unusable_cidrs(cidr):
    with pytest.raises(InvalidInput) as caught:
        network.nat_network_xml("net", "br0", cidr)
    assert caught.value.field == "cidr"


def _shape(document: str) -> list[tuple[str, tuple[str, ...]]]:
    """Element tags and attribute names in document order: the structure, without text."""
    return [(str(el.tag), tuple(sorted(str(key) for key in el.attrib))) for el in etree.fromstring(document.encode()).iter()]


@pytest.mark.parametrize(
    ("build", "plain"),
    [
        (lambda s: pool.dir_pool_xml(s, "/p"), lambda: pool.dir_pool_xml("n", "/p")),
        (lambda s: pool.dir_pool_xml("n", "/tmp/" + s), lambda: pool.dir_pool_xml("n", "/p")),
        (lambda s: volume.volume_xml(s, GIB), lambda: volume.volume_xml("n", GIB)),
        (lambda s: network.nat_network_xml(s, "br0", "192.168.231.0/24"), lambda: network.nat_network_xml("n", "br0", "192.168.231.0/24")),
        (
            lambda s: volume.clone_volume_xml("n", GIB, backing_path="/t/" + s, backing_format="qcow2"),
            lambda: volume.clone_volume_xml("n", GIB, backing_path="/t", backing_format="qcow2"),
        ),
    ],
    ids=["pool-name", "pool-path", "volume-name", "network-name", "backing-path"],
)
def test_xml_metacharacters_stay_text_and_do_not_change_the_document(build, plain):
    hostile = build(HOSTILE)
    assert _shape(hostile) == _shape(plain())
    assert any((el.text or "").endswith(HOSTILE) for el in etree.fromstring(hostile.encode()).iter())


def test_bridge_name_with_quotes_stays_an_attribute_value():
    document = network.nat_network_xml("n", "br\"0' x='1", "192.168.231.0/24")
    assert etree.fromstring(document.encode()).xpath("string(bridge/@name)") == "br\"0' x='1"


def test_readers_return_what_libvirt_reports():
    assert pool.pool_target_path(DIR_POOL) == "/var/lib/libvirt/images"
    assert pool.pool_type(DIR_POOL) == "dir"
    assert volume.volume_format(QCOW2_VOLUME) == "qcow2"
    assert network.network_shape(LIBVIRT_DEFAULT_NETWORK) == network.NetworkShape("nat", "virbr0", "192.168.122.0/24")


def test_network_shape_reads_prefix_skips_ipv6_and_knows_isolated_networks():
    document = """<network><name>iso</name><bridge name='virbr9'/>
      <ip family='ipv6' address='fd00::1' prefix='64'/>
      <ip address='192.168.240.1' prefix='26'/></network>"""
    assert network.network_shape(document) == network.NetworkShape("", "virbr9", "192.168.240.0/26")


def test_readers_answer_empty_for_missing_parts():
    assert pool.pool_target_path("<pool type='rbd'><name>x</name></pool>") == ""
    assert volume.volume_format("<volume><name>x</name></volume>") == ""
    assert network.network_shape("<network><name>x</name></network>") == network.NetworkShape("", "", "")


def test_reader_does_not_resolve_external_entities(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET")
    document = f'<!DOCTYPE pool [<!ENTITY x SYSTEM "file://{secret}">]><pool type="dir"><target><path>&x;</path></target></pool>'
    with pytest.raises(DocumentError, match="DOCTYPE") as caught:
        pool.pool_target_path(document)
    assert "TOP-SECRET" not in caught.value.message


def test_host_capabilities_of_the_real_daemon_offer_qemu_and_kvm_for_both_x86_arches():
    caps = capabilities.host_capabilities((DATA / "hypervisor" / "capabilities.xml").read_text())
    assert caps == HostCapabilities(arches={"i686": ("qemu", "kvm"), "x86_64": ("qemu", "kvm")}, kvm=True, host_arch="x86_64")


def test_host_without_kvm_offers_only_tcg_and_says_so():
    document = (DATA / "hypervisor" / "capabilities.xml").read_text().replace("<domain type='kvm'/>", "")
    caps = capabilities.host_capabilities(document)
    assert caps.arches == {"i686": ("qemu",), "x86_64": ("qemu",)}
    assert caps.kvm is False


MIXED_CAPABILITIES = """\
<capabilities>
  <host><cpu><arch>aarch64</arch></cpu></host>
  <guest><os_type>xen</os_type><arch name='x86_64'><domain type='xen'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='kvm'/><domain type='qemu'/></arch></guest>
  <guest><os_type>exe</os_type><arch name='riscv64'><domain type='qemu'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='aarch64'><domain type='qemu'/><domain/></arch></guest>
  <guest><os_type>hvm</os_type><arch><domain type='kvm'/></arch></guest>
</capabilities>
"""


def test_host_capabilities_count_hvm_guests_only_and_merge_an_arch_listed_twice():
    caps = capabilities.host_capabilities(MIXED_CAPABILITIES)
    assert caps.arches == {"x86_64": ("qemu", "kvm"), "aarch64": ("qemu",)}
    assert caps.host_arch == "aarch64"


def test_kvm_counts_only_when_offered_for_the_hosts_own_arch():
    """x86_64 offers kvm above, but on an aarch64 host that would be emulation anyway."""
    assert capabilities.host_capabilities(MIXED_CAPABILITIES).kvm is False


def test_capabilities_without_a_host_arch_never_claim_kvm():
    caps = capabilities.host_capabilities(
        "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'><domain type='kvm'/></arch></guest></capabilities>"
    )
    assert (caps.host_arch, caps.kvm, caps.arches) == ("", False, {"x86_64": ("kvm",)})


def test_max_vcpus_is_the_q35_limit_the_real_daemon_reports():
    assert capabilities.max_vcpus((DATA / "hypervisor" / "domcapabilities-qemu-q35.xml").read_text()) == 288


@pytest.mark.parametrize("vcpu", ["", "<vcpu/>", "<vcpu max=''/>", "<vcpu max='many'/>", "<vcpu max='-1'/>"])
def test_max_vcpus_is_unknown_when_the_domain_capabilities_do_not_state_a_number(vcpu):
    assert capabilities.max_vcpus(f"<domainCapabilities><arch>x86_64</arch>{vcpu}</domainCapabilities>") is None


def test_domain_name_reads_a_generated_definition():
    assert domain.domain_name((DATA / "domain" / "example1-simple-vm.xml").read_text()) == "simple-vm"


@pytest.mark.parametrize(
    ("document", "name"),
    [
        ("<domain type='kvm'><name>\n  web-1 \n</name></domain>", "web-1"),
        ("<domain type='kvm'><name>a&amp;b</name></domain>", "a&b"),
        ("<domain type='kvm'><name/></domain>", ""),
        ("<domain type='kvm'><uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid></domain>", ""),
        ("<domain type='kvm'><devices><disk><name>inner</name></disk></devices></domain>", ""),
    ],
)
def test_domain_name_is_the_top_level_name_stripped_or_empty(document, name):
    assert domain.domain_name(document) == name


@pytest.mark.parametrize(("sample", "kind"), [("interface-bridge.xml", "bridge"), ("interface-ethernet.xml", "ethernet")])
def test_interface_type_reads_what_libvirts_interface_driver_reports(sample, kind):
    assert interface.interface_type((DATA / "hypervisor" / sample).read_text()) == kind


@pytest.mark.parametrize(("document", "kind"), [("<interface type='bond' name='bond0'/>", "bond"), ("<interface name='x'/>", "")])
def test_interface_type_of_other_kinds_and_of_none(document, kind):
    assert interface.interface_type(document) == kind


@pytest.mark.parametrize(
    "read",
    [
        pool.pool_type,
        volume.volume_format,
        network.network_shape,
        capabilities.host_capabilities,
        capabilities.max_vcpus,
        interface.interface_type,
        domain.domain_name,
        domain.parse_domain,
        domain.parse_definition,
    ],
)
def test_every_reader_refuses_a_doctype_even_without_entities(read):
    with pytest.raises(DocumentError, match="DOCTYPE"):
        read("<!DOCTYPE x><x/>")


def test_readers_refuse_a_document_of_another_kind():
    with pytest.raises(DocumentError, match="expected a <pool> document, got <volume>"):
        pool.pool_type(QCOW2_VOLUME)


def test_files_are_read_by_the_same_parser_and_a_doctype_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET")
    plain, hostile = tmp_path / "plain.xml", tmp_path / "hostile.xml"
    plain.write_text("<libosinfo><os id='x'/></libosinfo>")
    hostile.write_text(f'<!DOCTYPE libosinfo [<!ENTITY x SYSTEM "file://{secret}">]><libosinfo><os id="y">&x;</os></libosinfo>')
    assert parse_file(plain)[0].get("id") == "x"
    with pytest.raises(DocumentError, match="DOCTYPE") as caught:
        parse_file(hostile)
    assert "TOP-SECRET" not in caught.value.message


def test_a_volume_for_an_unprivileged_vapor_is_given_to_its_user(monkeypatch):
    # run.sh runs the worker as `vapor`: the files libvirtd (root) creates for it must be vapor's.
    for document in (volume.volume_xml("d.qcow2", GIB, owner=(998, 997)), volume.clone_volume_xml("c.qcow2", GIB, owner=(998, 997))):
        permissions = etree.fromstring(document).find("target/permissions")
        assert permissions is not None
        assert [(child.tag, child.text) for child in permissions] == [("owner", "998"), ("group", "997"), ("mode", "0600")]
    assert etree.fromstring(volume.volume_xml("d.qcow2", GIB)).find("target/permissions") is None

    from vms.hypervisor import storage

    monkeypatch.setattr(storage.os, "geteuid", lambda: 0)
    assert storage.volume_owner() is None  # root: libvirt's own default
    monkeypatch.setattr(storage.os, "geteuid", lambda: 998)
    monkeypatch.setattr(storage.os, "getegid", lambda: 997)
    assert storage.volume_owner() == (998, 997)


def test_firmware_support_is_what_the_real_daemon_reports():
    offered = capabilities.firmware_support((DATA / "hypervisor" / "domcapabilities-qemu-q35.xml").read_text())
    assert (offered.uefi, offered.secure_boot, offered.tpm) == (True, True, True)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", (None, None, None)),  # silent: not judged
        ("<os supported='yes'><loader supported='yes'/></os>", (False, False, None)),  # no firmware file
        ("<os supported='yes'><loader supported='no'><value>/x.fd</value></loader></os>", (False, False, None)),
        ("<os supported='yes'><enum name='firmware'><value>efi</value></enum></os>", (True, None, None)),
        (
            "<os supported='yes'><loader supported='yes'><value>/OVMF_CODE.fd</value>"
            "<enum name='secure'><value>no</value></enum></loader></os><devices><tpm supported='no'/></devices>",
            (True, False, False),
        ),
    ],
)
def test_firmware_support_reads_what_the_domain_capabilities_say_and_no_more(body, expected):
    offered = capabilities.firmware_support(f"<domainCapabilities><arch>x86_64</arch>{body}</domainCapabilities>")
    assert (offered.uefi, offered.secure_boot, offered.tpm) == expected
