"""The libvirt error mapping and the name rules of vms/hypervisor/errors.py.

Pure: no libvirt, no database. The mapping decides the HTTP answer of every
hypervisor failure (404, 409 or 500), and the name rules are what keeps a
volume, pool or network name inside its directory (CVE-2015-5313).
"""

from __future__ import annotations

import pytest

from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound
from vms.hypervisor.errors import (
    MAX_NAME_LENGTH,
    VIR_ERR_CONFIG_UNSUPPORTED,
    VIR_ERR_DOM_EXIST,
    VIR_ERR_INTERNAL_ERROR,
    VIR_ERR_INVALID_ARG,
    VIR_ERR_NETWORK_EXIST,
    VIR_ERR_NO_DOMAIN,
    VIR_ERR_NO_INTERFACE,
    VIR_ERR_NO_NETWORK,
    VIR_ERR_NO_STORAGE_POOL,
    VIR_ERR_NO_STORAGE_VOL,
    VIR_ERR_NO_SUPPORT,
    VIR_ERR_OPERATION_FAILED,
    VIR_ERR_OPERATION_INVALID,
    VIR_ERR_STORAGE_VOL_EXIST,
    from_libvirt,
    validate_bridge_name,
    validate_name,
    validate_volume_name,
)

# Messages in the words libvirt 9.0 uses; for the specific codes the code alone decides.
ERRORS = [
    (VIR_ERR_NO_STORAGE_POOL, "Storage pool not found: no storage pool with matching name 'nope'", NotFound),
    (VIR_ERR_NO_STORAGE_VOL, "Storage volume not found: no storage vol with matching name 'nope'", NotFound),
    (VIR_ERR_NO_NETWORK, "Network not found: no network with matching name 'nope'", NotFound),
    (VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching name 'nope'", NotFound),
    (VIR_ERR_NO_INTERFACE, "Interface not found: couldn't find interface named 'br9'", NotFound),
    (VIR_ERR_STORAGE_VOL_EXIST, "storage volume 'a.qcow2' exists already", Conflict),
    (VIR_ERR_NETWORK_EXIST, "network 'x' already exists", Conflict),
    (VIR_ERR_DOM_EXIST, "domain 'x' is already active", Conflict),
    (VIR_ERR_OPERATION_FAILED, "operation failed: pool 'exp1' already exists with uuid 741ff96a-35cb-41e6-a794-05f9af45d306", Conflict),
    (VIR_ERR_OPERATION_FAILED, "operation failed: domain 'x' is already defined with uuid 3e3fce45-4f53-4fa7-bb32-11f34168b82b", Conflict),
    (VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: volume target path '/p/ext.qcow2' already exists", Conflict),
    (VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: storage pool 'x' is not active", HypervisorError),
    (VIR_ERR_OPERATION_FAILED, "operation failed: unable to find any master var store for loader", HypervisorError),
    (38, "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory", HypervisorError),
    (VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver: virConnectGetDomainCapabilities", HypervisorError),
    (VIR_ERR_INVALID_ARG, "invalid argument: unsupported flags (0x40) in function testDomainUndefineFlags", HypervisorError),
    (VIR_ERR_CONFIG_UNSUPPORTED, "unsupported configuration: readonly sata disks are not supported", HypervisorError),
]


@pytest.mark.parametrize(("code", "message", "expected"), ERRORS)
def test_libvirt_errors_map_to_vapor_errors_with_libvirts_words(code, message, expected):
    error = from_libvirt(code, message)
    assert type(error) is expected
    assert error.message == message


@pytest.mark.parametrize(("code", "message", "expected"), [row for row in ERRORS if row[2] is not HypervisorError])
def test_not_found_and_conflict_blame_the_field_the_caller_names(code, message, expected):
    error = from_libvirt(code, message, field="name")
    assert (error.field, error.as_dict()["errors"]) == ("name", {"name": [message]})


def test_hypervisor_error_keeps_the_libvirt_code_for_the_log_and_blames_no_field():
    error = from_libvirt(VIR_ERR_INTERNAL_ERROR, "internal error: boom", field="name")
    assert error.status == 500
    assert error.field is None
    assert error.as_dict() == {"detail": "internal error: boom", "code": "hypervisor_error", "libvirt_code": VIR_ERR_INTERNAL_ERROR}


@pytest.mark.parametrize("code", [VIR_ERR_INTERNAL_ERROR, VIR_ERR_INVALID_ARG, VIR_ERR_CONFIG_UNSUPPORTED])
def test_taken_words_count_only_under_the_generic_codes(code):
    """A specific code means what it says, even when libvirt's words mention "already exists"."""
    assert type(from_libvirt(code, "internal error: path '/p/x' already exists")) is HypervisorError


@pytest.mark.parametrize("message", ["", "   \n"])
def test_a_wordless_error_names_its_code(message):
    assert from_libvirt(VIR_ERR_NO_DOMAIN, message).message == f"libvirt error {VIR_ERR_NO_DOMAIN}"


def test_libvirts_words_are_stripped_of_surrounding_whitespace():
    assert from_libvirt(VIR_ERR_NO_NETWORK, "  Network not found: x\n").message == "Network not found: x"


@pytest.mark.parametrize("name", ["disk-1.qcow2", "a", "A_b.c-d", "x" * MAX_NAME_LENGTH, "vm.disk..img"])
def test_safe_volume_names_are_accepted(name):
    assert validate_volume_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", "/etc/passwd", ".hidden", "..", "a b", "x\x00y", "x" * (MAX_NAME_LENGTH + 1), "disk;rm", "é.qcow2"]
)
def test_unsafe_volume_names_are_refused(name):
    with pytest.raises(InvalidInput) as caught:
        validate_volume_name(name)
    assert caught.value.field == "name"


@pytest.mark.parametrize("name", [None, 7, b"disk.qcow2"])
def test_names_that_are_not_text_are_refused(name):
    with pytest.raises(InvalidInput, match="must not be empty"):
        validate_volume_name(name)


def test_volume_name_refusal_blames_the_field_the_caller_names():
    with pytest.raises(InvalidInput) as caught:
        validate_volume_name("a/b", field="clone_name")
    assert caught.value.field == "clone_name"


def test_pool_and_network_names_follow_the_same_rule_with_their_own_field():
    with pytest.raises(InvalidInput) as caught:
        validate_name("../pool", field="pool", what="pool")
    assert caught.value.field == "pool"
    assert "pool name" in caught.value.message


@pytest.mark.parametrize(
    ("name", "words"),
    [("", "must not be empty"), ("x" * 256, "longer than 255"), (".net", "must not start with '.'"), ("n/1", "may only hold")],
)
def test_each_refusal_says_which_rule_the_name_broke(name, words):
    with pytest.raises(InvalidInput, match=words):
        validate_name(name, field="network", what="network")


@pytest.mark.parametrize("name", ["virbr0", "vt-1_a", "x" * 15])
def test_bridge_names_that_fit_linux_interface_names_are_accepted(name):
    assert validate_bridge_name(name) == name


@pytest.mark.parametrize("name", ["x" * 16, "br 0", "", "br/0", "br:0", None])
def test_bridge_names_linux_cannot_use_are_refused(name):
    with pytest.raises(InvalidInput) as caught:
        validate_bridge_name(name)
    assert caught.value.field == "bridge"


def test_bridge_name_refusal_blames_the_field_the_caller_names():
    with pytest.raises(InvalidInput) as caught:
        validate_bridge_name("br 0", field="nics[0].bridge")
    assert caught.value.field == "nics[0].bridge"
