"""`manage.py vapor_bootstrap` against the real daemon, on scratch names so
the host's own `default` pool and network are never touched. The network
lives in libvirtd's private network namespace (scripts/libvirtd.sh), so its
bridge and NAT rules never reach the host."""

from __future__ import annotations

import io
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import skip_or_fail_in_ci
from tests.integration.conftest import URI, remove_network, remove_pool, unique, virsh
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.libvirt

# A subnet nothing else here uses; it exists only inside libvirtd's namespace.
CIDR = "192.168.231.0/24"
NETNS_STATE = Path("/run/vapor/libvirtd.netns")


@dataclass(frozen=True)
class Scratch:
    pool: str
    path: Path
    network: str
    bridge: str

    def options(self, **overrides: str) -> dict[str, str]:
        options = {"uri": URI, "pool_name": self.pool, "pool_path": str(self.path), "network_name": self.network, "bridge": self.bridge}
        return options | {"cidr": CIDR} | overrides


@pytest.fixture
def scratch(hypervisor: LibvirtDriver, tmp_path: Path) -> Iterator[Scratch]:
    names = Scratch(pool=unique("vapor-boot"), path=tmp_path / "pool", network=unique("vapor-net"), bridge=f"vtb{uuid.uuid4().hex[:8]}")
    try:
        yield names
    finally:
        remove_network(names.network)
        remove_pool(names.pool)


def bootstrap(**options: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("vapor_bootstrap", stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def virsh_info(kind: str, name: str) -> dict[str, str]:
    """`virsh pool-info` / `net-info` as a dict: an account independent of the driver."""
    lines = virsh(f"{kind}-info", name).stdout.splitlines()
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if value}


def test_bootstrap_creates_pool_and_network_then_is_idempotent(hypervisor: LibvirtDriver, scratch: Scratch):
    first, _ = bootstrap(**scratch.options())
    second, warnings = bootstrap(**scratch.options())

    assert f"storage pool '{scratch.pool}': defined at {scratch.path}; active, autostart" in first
    assert f"network '{scratch.network}': defined, nat on {scratch.bridge} {CIDR}; active, autostart" in first
    assert f"storage pool '{scratch.pool}': already defined at {scratch.path}; active, autostart" in second
    assert f"network '{scratch.network}': already defined, nat on {scratch.bridge} {CIDR}; active, autostart" in second
    assert warnings == ""
    assert scratch.path.is_dir()
    pool, network = virsh_info("pool", scratch.pool), virsh_info("net", scratch.network)
    assert (pool["State"], pool["Autostart"]) == ("running", "yes")
    assert (network["Active"], network["Autostart"], network["Bridge"]) == ("yes", "yes", scratch.bridge)
    assert "<ip address='192.168.231.1' netmask='255.255.255.0'>" in virsh("net-dumpxml", scratch.network).stdout
    assert hypervisor.network_exists(scratch.network) is True


def test_bootstrap_restarts_stopped_objects_without_redefining_them(scratch: Scratch):
    bootstrap(**scratch.options())
    virsh("pool-destroy", scratch.pool)
    virsh("net-destroy", scratch.network)
    virsh("pool-autostart", scratch.pool, "--disable")

    output, _ = bootstrap(**scratch.options())

    assert "already defined" in output
    assert (virsh_info("pool", scratch.pool)["State"], virsh_info("pool", scratch.pool)["Autostart"]) == ("running", "yes")
    assert virsh_info("net", scratch.network)["Active"] == "yes"


def test_bootstrap_keeps_an_existing_pool_elsewhere_and_warns(scratch: Scratch, tmp_path: Path):
    bootstrap(**scratch.options())

    _, warnings = bootstrap(**scratch.options(pool_path=str(tmp_path / "other")))

    assert f"uses {scratch.path}, not {tmp_path / 'other'}; left as it is" in warnings
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("cidr", "fd00::/64", "not an IPv4 network"),
        ("bridge", "a-bridge-name-too-long", "bridge name"),
        ("pool_path", "relative/dir", "absolute"),
    ],
)
def test_bootstrap_refuses_bad_options_before_defining_anything(scratch: Scratch, hypervisor: LibvirtDriver, option, value, message):
    with pytest.raises(CommandError, match=message):
        bootstrap(**scratch.options(**{option: value}))
    assert hypervisor.network_exists(scratch.network) is False
    assert scratch.pool not in virsh("pool-list", "--all", "--name").stdout.split()


def test_bootstrap_network_lives_in_libvirtds_namespace_not_on_the_host(scratch: Scratch):
    if not NETNS_STATE.exists() or not NETNS_STATE.read_text().strip():
        skip_or_fail_in_ci("libvirtd was not started by scripts/libvirtd.sh in a private network namespace")
    netns = NETNS_STATE.read_text().strip()
    bootstrap(**scratch.options())

    inside = subprocess.run(["ip", "netns", "exec", netns, "ip", "-br", "addr", "show", scratch.bridge], capture_output=True, text=True)
    on_host = subprocess.run(["ip", "link", "show", scratch.bridge], capture_output=True, text=True)

    assert "192.168.231.1/24" in inside.stdout
    assert on_host.returncode != 0
