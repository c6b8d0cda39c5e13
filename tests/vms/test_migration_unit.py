"""Live migration without a daemon: the driver's parameters, progress records and error mapping
(vms/hypervisor/migration.py), and the fake's migration between two in-memory hosts.
The real migration between libvirt hosts is in tests/multihost."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from tests.fakes import FakeHypervisor, zero_counters
from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound, ServiceUnavailable
from vms.hypervisor import JobProgress
from vms.hypervisor.migration import MIGRATE_FLAGS, job_progress, migration_error, migration_params


def test_flags_are_live_peer_to_peer_and_move_the_definition():
    for flag in ("LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE"):
        assert MIGRATE_FLAGS & getattr(libvirt, f"VIR_MIGRATE_{flag}"), flag
    assert not MIGRATE_FLAGS & libvirt.VIR_MIGRATE_NON_SHARED_DISK  # only with copy_storage


def test_params_send_qemus_stream_to_the_destination_address():
    assert migration_params(None) == {}
    assert migration_params("10.99.2.2") == {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.99.2.2",
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "10.99.2.2",
    }
    assert migration_params("fd00::2")[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://[fd00::2]"


@pytest.mark.parametrize("address", ["", "10.0.0.1/24", "user@host", "a b", "host?x"])
def test_params_refuse_what_is_not_an_address(address: str):
    with pytest.raises(InvalidInput):
        migration_params(address)


def test_job_progress_reads_libvirts_statistics():
    stats = {
        "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
        libvirt.VIR_DOMAIN_JOB_OPERATION: libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT,
        libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED: 1500,
        libvirt.VIR_DOMAIN_JOB_DATA_TOTAL: 1000,
        libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED: 400,
        libvirt.VIR_DOMAIN_JOB_DATA_REMAINING: 600,
        libvirt.VIR_DOMAIN_JOB_DISK_TOTAL: 300,
        libvirt.VIR_DOMAIN_JOB_DISK_PROCESSED: 300,
    }
    assert job_progress(stats) == JobProgress("migration_out", 1500, 1000, 400, 600, disk_total_bytes=300, disk_processed_bytes=300)
    assert job_progress({"type": libvirt.VIR_DOMAIN_JOB_NONE}) is None
    assert job_progress({"type": libvirt.VIR_DOMAIN_JOB_COMPLETED, libvirt.VIR_DOMAIN_JOB_DATA_TOTAL: 5}) is None
    assert job_progress({}) is None


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, 0, message, 0, "", None, None, 0, 0)
    return exc


def test_a_missing_destination_pool_is_a_conflict_about_the_destination_not_a_404():
    words = "Storage pool not found: no storage pool with matching target path '/var/lib/libvirt/images'"
    error = migration_error(libvirt_error(libvirt.VIR_ERR_NO_STORAGE_POOL, words), "vm1", "qemu+tcp://h2/system")
    assert isinstance(error, Conflict) and not isinstance(error, NotFound)
    assert error.code == "destination_storage" and "/var/lib/libvirt/images" in error.message


def test_other_migration_errors_keep_the_adapters_mapping_and_name_the_destination():
    invalid = migration_error(libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running"), "vm1", "qemu+tcp://h2/system")
    assert isinstance(invalid, Conflict) and invalid.field == "name"
    aborted = migration_error(libvirt_error(libvirt.VIR_ERR_OPERATION_ABORTED, "migration out job: canceled by client"), "vm1", "u")
    assert aborted.code == "migration_aborted"
    gone = migration_error(
        libvirt_error(libvirt.VIR_ERR_RPC, "End of file while reading data: Input/output error"), "vm1", "qemu+tcp://h2/system"
    )
    assert isinstance(gone, ServiceUnavailable)
    other = migration_error(
        libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, "unable to connect to server at 'h2:16509'"), "vm1", "qemu+tcp://h2/system"
    )
    assert type(other) is HypervisorError
    assert other.message.startswith("the migration of vm1 to qemu+tcp://h2/system failed:") and str(other) == other.message


# --- the fake -----------------------------------------------------------------

DOMAIN = """<domain type='qemu'><name>vm1</name><uuid>6f1f0a3e-58a4-4c3f-9d32-2b6c1b9f7a11</uuid>
<memory unit='KiB'>262144</memory><devices>
<disk type='file' device='disk'><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/isos/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>"""


def two_hosts(tmp_path: Path) -> tuple[FakeHypervisor, FakeHypervisor]:
    source, dest = FakeHypervisor(tmp_path / "h1"), FakeHypervisor(tmp_path / "h2")
    source.pool_dir.mkdir()
    source.peers["qemu+tcp://h2/system"] = dest
    disk = source.pool_dir / "vm1.qcow2"
    disk.write_bytes(b"x" * 4096)
    source.define_domain(DOMAIN.format(disk=disk))
    source.start_domain("vm1")
    return source, dest


def test_fake_migration_moves_the_running_domain(tmp_path: Path):
    source, dest = two_hosts(tmp_path)
    dest.pools["default"] = source.pool_dir  # a pool in the same directory, as libvirt needs
    seen: list[JobProgress] = []
    source.migrate_domain("vm1", "qemu+tcp://h2/system", copy_storage=True, dest_address="h2", progress=seen.append)
    assert "vm1" not in source.domains and dest.domain_state("vm1") == "running"
    assert seen and seen[-1].remaining_bytes == 0 and seen[-1].processed_bytes == zero_counters("vm1").memory_kib * 1024 + 4096


def test_fake_migration_refused_leaves_the_domain_running_on_the_source(tmp_path: Path):
    source, dest = two_hosts(tmp_path)
    with pytest.raises(Conflict) as refused:
        source.migrate_domain("vm1", "qemu+tcp://h2/system", copy_storage=True)
    assert refused.value.code == "destination_storage"
    with pytest.raises(ServiceUnavailable):
        source.migrate_domain("vm1", "qemu+tcp://h3/system", copy_storage=True)
    source.destroy_domain("vm1")
    with pytest.raises(Conflict):
        source.migrate_domain("vm1", "qemu+tcp://h2/system", copy_storage=False)
    assert source.domains["vm1"] and "vm1" not in dest.domains


def test_fake_abort_without_a_job_is_a_conflict(tmp_path: Path):
    source, _dest = two_hosts(tmp_path)
    assert source.domain_job("vm1") is None
    with pytest.raises(Conflict) as none:
        source.abort_migration("vm1")
    assert none.value.code == "no_job"
    source.jobs["vm1"] = JobProgress("migration_out", 10, 100, 50, 50)
    assert source.domain_job("vm1") == JobProgress("migration_out", 10, 100, 50, 50)
    source.abort_migration("vm1")
    assert source.domain_job("vm1") is None


def test_tpm_state_path_is_libvirts_directory_by_uuid_for_an_emulated_tpm_only():
    from vms.hypervisor.documents.snapshot import parse_tpm_state_path

    uuid = "254d56c0-e6a2-4a10-bd9a-cce3c4e158c9"
    emulated = f"<domain><uuid>{uuid}</uuid><devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm></devices></domain>"
    assert parse_tpm_state_path(emulated) == f"/var/lib/libvirt/swtpm/{uuid}"
    passthrough = f"<domain><uuid>{uuid}</uuid><devices><tpm><backend type='passthrough'/></tpm></devices></domain>"
    assert parse_tpm_state_path(passthrough) == "" and parse_tpm_state_path(f"<domain><uuid>{uuid}</uuid><devices/></domain>") == ""
