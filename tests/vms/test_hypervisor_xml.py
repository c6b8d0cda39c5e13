"""Golden tests for the pool/volume/network XML builders and readers, and the
name rules and error mapping that guard the same documents. Pure: no libvirt,
no database."""

from __future__ import annotations

import pytest
from lxml import etree

from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound
from vms.hypervisor import xml as lvxml
from vms.hypervisor.errors import from_libvirt, validate_bridge_name, validate_name, validate_volume_name

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


def test_dir_pool_xml_matches_golden_document():
    assert lvxml.dir_pool_xml("default", "/var/lib/libvirt/images") == DIR_POOL


def test_qcow2_volume_is_thin_and_states_its_format():
    assert lvxml.volume_xml("disk-1.qcow2", GIB) == QCOW2_VOLUME


def test_raw_volume_states_raw_format():
    root = etree.fromstring(lvxml.volume_xml("data.img", 5 * GIB, "raw"))
    assert root.xpath("string(target/format/@type)") == "raw"
    assert root.findtext("capacity") == str(5 * GIB)
    assert root.findtext("allocation") == "0"


def test_volume_format_outside_the_allowed_list_is_refused():
    with pytest.raises(InvalidInput) as caught:
        lvxml.volume_xml("disk.vmdk", GIB, "vmdk")
    assert caught.value.field == "format"


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5, "1073741824"])
def test_volume_capacity_must_be_a_positive_whole_number_of_bytes(capacity):
    with pytest.raises(InvalidInput) as caught:
        lvxml.volume_xml("disk.qcow2", capacity)
    assert caught.value.field == "capacity"


def test_nat_network_xml_matches_libvirts_default_network():
    assert lvxml.nat_network_xml("default", "virbr0", "192.168.122.0/24") == DEFAULT_NETWORK


@pytest.mark.parametrize(
    ("cidr", "gateway", "netmask", "first", "last"),
    [
        ("192.168.231.0/24", "192.168.231.1", "255.255.255.0", "192.168.231.2", "192.168.231.254"),
        ("10.9.0.0/16", "10.9.0.1", "255.255.0.0", "10.9.0.2", "10.9.255.254"),
        ("192.168.5.8/30", "192.168.5.9", "255.255.255.252", "192.168.5.10", "192.168.5.10"),
    ],
)
def test_nat_layout_gives_gateway_first_host_and_dhcp_the_rest(cidr, gateway, netmask, first, last):
    assert lvxml.nat_layout(cidr) == lvxml.NatLayout(gateway=gateway, netmask=netmask, dhcp_start=first, dhcp_end=last)


@pytest.mark.parametrize("cidr", ["192.168.1.1/24", "192.168.1.0/31", "fd00::/64", "not-a-network", ""])
def test_nat_network_refuses_unusable_cidrs(cidr):
    with pytest.raises(InvalidInput) as caught:
        lvxml.nat_network_xml("net", "br0", cidr)
    assert caught.value.field == "cidr"


def _shape(document: str) -> list[tuple[str, tuple[str, ...]]]:
    """Element tags and attribute names in document order: the structure, without text."""
    return [(str(el.tag), tuple(sorted(str(key) for key in el.attrib))) for el in etree.fromstring(document.encode()).iter()]


@pytest.mark.parametrize(
    ("build", "plain"),
    [
        (lambda s: lvxml.dir_pool_xml(s, "/p"), lambda: lvxml.dir_pool_xml("n", "/p")),
        (lambda s: lvxml.dir_pool_xml("n", "/tmp/" + s), lambda: lvxml.dir_pool_xml("n", "/p")),
        (lambda s: lvxml.volume_xml(s, GIB), lambda: lvxml.volume_xml("n", GIB)),
        (lambda s: lvxml.nat_network_xml(s, "br0", "192.168.231.0/24"), lambda: lvxml.nat_network_xml("n", "br0", "192.168.231.0/24")),
    ],
    ids=["pool-name", "pool-path", "volume-name", "network-name"],
)
def test_xml_metacharacters_stay_text_and_do_not_change_the_document(build, plain):
    hostile = build(HOSTILE)
    assert _shape(hostile) == _shape(plain())
    assert any((el.text or "").endswith(HOSTILE) for el in etree.fromstring(hostile.encode()).iter())


def test_bridge_name_with_quotes_stays_an_attribute_value():
    document = lvxml.nat_network_xml("n", "br\"0' x='1", "192.168.231.0/24")
    assert etree.fromstring(document.encode()).xpath("string(bridge/@name)") == "br\"0' x='1"


def test_readers_return_what_libvirt_reports():
    assert lvxml.pool_target_path(DIR_POOL) == "/var/lib/libvirt/images"
    assert lvxml.pool_type(DIR_POOL) == "dir"
    assert lvxml.volume_format(QCOW2_VOLUME) == "qcow2"
    assert lvxml.network_shape(LIBVIRT_DEFAULT_NETWORK) == lvxml.NetworkShape("nat", "virbr0", "192.168.122.0/24")


def test_network_shape_reads_prefix_skips_ipv6_and_knows_isolated_networks():
    document = """<network><name>iso</name><bridge name='virbr9'/>
      <ip family='ipv6' address='fd00::1' prefix='64'/>
      <ip address='192.168.240.1' prefix='26'/></network>"""
    assert lvxml.network_shape(document) == lvxml.NetworkShape("", "virbr9", "192.168.240.0/26")


def test_readers_answer_empty_for_missing_parts():
    assert lvxml.pool_target_path("<pool type='rbd'><name>x</name></pool>") == ""
    assert lvxml.volume_format("<volume><name>x</name></volume>") == ""
    assert lvxml.network_shape("<network><name>x</name></network>") == lvxml.NetworkShape("", "", "")


def test_reader_does_not_resolve_external_entities(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET")
    document = f'<!DOCTYPE pool [<!ENTITY x SYSTEM "file://{secret}">]><pool type="dir"><target><path>&x;</path></target></pool>'
    assert "TOP-SECRET" not in lvxml.pool_target_path(document)


@pytest.mark.parametrize("name", ["disk-1.qcow2", "a", "A_b.c-d", "x" * 255, "vm.disk..img"])
def test_safe_volume_names_are_accepted(name):
    assert validate_volume_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "/etc/passwd", ".hidden", "..", "a b", "x\x00y", "x" * 256, "disk;rm", "é.qcow2"])
def test_unsafe_volume_names_are_refused(name):
    with pytest.raises(InvalidInput) as caught:
        validate_volume_name(name)
    assert caught.value.field == "name"


def test_pool_and_network_names_follow_the_same_rule_with_their_own_field():
    with pytest.raises(InvalidInput) as caught:
        validate_name("../pool", field="pool", what="pool")
    assert caught.value.field == "pool"
    assert "pool name" in caught.value.message


@pytest.mark.parametrize("name", ["virbr0", "vt-1_a", "x" * 15])
def test_bridge_names_that_fit_linux_interface_names_are_accepted(name):
    assert validate_bridge_name(name) == name


@pytest.mark.parametrize("name", ["x" * 16, "br 0", "", "br/0"])
def test_bridge_names_linux_cannot_use_are_refused(name):
    with pytest.raises(InvalidInput) as caught:
        validate_bridge_name(name)
    assert caught.value.field == "bridge"


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (49, "Storage pool not found: no storage pool with matching name 'nope'", NotFound),
        (50, "Storage volume not found: no storage vol with matching name 'nope'", NotFound),
        (43, "Network not found: no network with matching name 'nope'", NotFound),
        (42, "Domain not found: no domain with matching name 'nope'", NotFound),
        (90, "storage volume 'a.qcow2' exists already", Conflict),
        (37, "network 'x' already exists", Conflict),
        (9, "operation failed: pool 'exp1' already exists with uuid 741ff96a-35cb-41e6-a794-05f9af45d306", Conflict),
        (55, "Requested operation is not valid: volume target path '/p/ext.qcow2' already exists", Conflict),
        (55, "Requested operation is not valid: storage pool 'x' is not active", HypervisorError),
        (38, "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory", HypervisorError),
    ],
)
def test_libvirt_errors_map_to_vapor_errors_with_libvirts_words(code, message, expected):
    error = from_libvirt(code, message)
    assert type(error) is expected
    assert error.message == message


def test_hypervisor_error_keeps_the_libvirt_code_for_the_log():
    assert from_libvirt(1, "internal error: boom").as_dict()["libvirt_code"] == 1
