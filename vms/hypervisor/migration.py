"""Live migration to another libvirt host, and the progress of a domain's running job.

A mixin of `LibvirtDriver`. `migrate_domain` is libvirt's peer-to-peer live
migration: the source libvirtd itself connects to `dest_uri`, so the URI must
be reachable *from the source host* (not only from the portal), and the
definition moves with the guest (persistent on the destination, undefined on
the source once the guest runs there). The migration stream (and, with
`copy_storage`, the disks' NBD stream) goes straight from QEMU to QEMU at
`dest_address`: give it, because libvirt's default is the destination's host
name, which the source may not resolve.

Storage with `copy_storage` (libvirt 9.0, observed in tests/multihost): the
destination needs a storage pool whose directory is the disk files' directory
(the same path as on the source); libvirt creates the missing volumes there
itself, with the source's size and format, before copying (a volume already
there of that name is used as it is). Without such a pool the migration
fails before the guest is touched and it keeps running on the source
(Conflict, code `destination_storage`). A copy-storage migration that fails
or is aborted once the copy began leaves the volumes libvirt made on the
destination behind (seen with libvirt 9.0): the caller removes them, or a
retry reuses them. The source's volumes stay too after a *successful*
migration (UNDEFINE_SOURCE forgets the definition, not the disks): removing
them is the caller's decision. Read-only disks (CD-ROMs) are not
copied: their files must exist at the same path on the destination. Without
`copy_storage` every disk must already be reachable at the same path there
(shared storage).

A failed or aborted migration leaves the guest running on the source: libvirt
only stops the source once the destination runs it.

UEFI and TPM (libvirt 9.0 / QEMU 7.2 / swtpm 0.7, observed in tests/multihost):
the UEFI variables travel inside the migration stream (QEMU's pflash device
is RAM it migrates), libvirt makes the destination's NVRAM file from the
firmware's template when the incoming domain starts, and QEMU writes the
migrated variables over it once the guest runs there. The source's NVRAM
file stays behind, like the disks. An emulated TPM's state travels in the
stream too (QEMU fetches swtpm's state and hands it to the destination's
swtpm, which writes it into its own state directory); libvirt removes the
source's TPM state itself. `host_file_exists` and `delete_host_file` reach
such files on any host through libvirt's storage (a pool of their directory,
made for the call and destroyed after when the host has none; a dir pool
lists subdirectories too), since the portal may not see the host's files.
"""

from __future__ import annotations

import logging
import os.path
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import libvirt

from vaporsite.errors import Conflict, HypervisorError, InvalidInput, VaporError
from vms.hypervisor import JobProgress
from vms.hypervisor._connection import Connection, calls, lookup_or_none, vapor_error
from vms.hypervisor.documents.pool import dir_pool_xml, pool_target_path, pool_type
from vms.hypervisor.documents.snapshot import NVRAM_DIR, parse_nvram_path, parse_tpm_state_path
from vms.hypervisor.errors import VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL, VIR_ERR_OPERATION_INVALID
from vms.hypervisor.storage import _FILE_POOL_TYPES

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
logger = logging.getLogger("vapor.hypervisor")

POLL_SECONDS = 0.5
_ABORT_WAIT_SECONDS = 30.0  # after abortJob, how long the migration call may take to return
_NO_JOB = (libvirt.VIR_DOMAIN_JOB_NONE, libvirt.VIR_DOMAIN_JOB_COMPLETED, libvirt.VIR_DOMAIN_JOB_FAILED, libvirt.VIR_DOMAIN_JOB_CANCELLED)
_OPERATIONS = {
    libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT: "migration_out",
    libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN: "migration_in",
    libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE: "save",
    libvirt.VIR_DOMAIN_JOB_OPERATION_RESTORE: "restore",
    libvirt.VIR_DOMAIN_JOB_OPERATION_DUMP: "dump",
    libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT: "snapshot",
    libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP: "backup",
}


def migration_params(dest_address: str | None) -> dict[str, Any]:
    """migrateToURI3's parameters: QEMU's stream goes to `dest_address`, where the destination listens."""
    if dest_address is None:
        return {}
    if not dest_address or any(c in dest_address for c in "/@?# "):
        raise InvalidInput(f"destination address {dest_address!r} is not a host name or IP address", field="dest_address")
    host = f"[{dest_address}]" if ":" in dest_address else dest_address
    return {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{host}", libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: dest_address}


def job_progress(stats: dict[str, Any]) -> JobProgress | None:
    """A job's statistics (`virDomainGetJobStats`) as a record; None when no job runs."""
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) in _NO_JOB:
        return None
    return JobProgress(
        operation=_OPERATIONS.get(stats.get(libvirt.VIR_DOMAIN_JOB_OPERATION, -1), "unknown"),
        elapsed_ms=int(stats.get(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED, 0)),
        total_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_TOTAL, 0)),
        processed_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED, 0)),
        remaining_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_REMAINING, 0)),
        memory_total_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_TOTAL, 0)),
        memory_processed_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_PROCESSED, 0)),
        disk_total_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_DISK_TOTAL, 0)),
        disk_processed_bytes=int(stats.get(libvirt.VIR_DOMAIN_JOB_DISK_PROCESSED, 0)),
    )


def migration_error(exc: libvirt.libvirtError, name: str, dest_uri: str) -> VaporError:
    """The Vapor error for a failed migration.

    A pool or volume "not found" here is the destination's (no pool for the
    disks' directory): a Conflict about the destination, not a 404 about the
    domain. "Operation invalid" is the domain's state (not running, another
    job under way): a Conflict too. The rest is mapped as everywhere.
    """
    code, words = exc.get_error_code(), exc.get_error_message() or str(exc)
    if code in (VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL):
        return Conflict(f"cannot migrate {name} to {dest_uri}: the destination cannot hold its disks: {words}", code="destination_storage")
    if code == VIR_ERR_OPERATION_INVALID:
        return Conflict(f"cannot migrate {name}: {words}", field="name")
    if code == libvirt.VIR_ERR_OPERATION_ABORTED:
        return Conflict(f"the migration of {name} to {dest_uri} was aborted: {words}", code="migration_aborted")
    error = vapor_error(exc)
    error.message = f"the migration of {name} to {dest_uri} failed: {error.message}"
    error.args = (error.message,)
    return error


class MigrationMixin(Connection):
    """`migrate_domain`, `domain_job`, `abort_migration`; the NVRAM file a UEFI domain leaves behind."""

    def nvram_path(self, name: str) -> str:
        """The file of the domain's UEFI variables on this host, from its live definition ("" for BIOS)."""
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]
        with calls(field="name"):
            return parse_nvram_path(domain.XMLDesc(0), NVRAM_DIR)

    def tpm_state_path(self, name: str) -> str:
        """The directory of the domain's emulated TPM state on this host, by its UUID ("" without such a TPM)."""
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]
        with calls(field="name"):
            return parse_tpm_state_path(domain.XMLDesc(0))

    def host_file_exists(self, path: str) -> bool:
        """Whether this host holds a file or directory at `path` (an absolute path), seen through libvirt's storage."""
        with self._directory_pool(os.path.dirname(os.path.normpath(path))) as pool:
            return pool is not None and self._file_in(pool, path) is not None

    def delete_host_file(self, path: str) -> bool:
        """Remove the file at `path` on this host (True), or say it was not there (False)."""
        with self._directory_pool(os.path.dirname(os.path.normpath(path))) as pool:
            found = None if pool is None else self._file_in(pool, path)
            if found is None:
                return False
            with calls():
                found.delete(0)
            return True

    @staticmethod
    def _file_in(pool: Any, path: str) -> Any:
        return lookup_or_none(pool.storageVolLookupByName, os.path.basename(path), VIR_ERR_NO_STORAGE_VOL)

    @contextmanager
    def _directory_pool(self, directory: str) -> Iterator[Any]:
        """An active pool of `directory`, refreshed: the host's own, or a transient one made for the call
        and destroyed after (the directory and its files stay). None when the directory is not there."""
        if not os.path.isabs(directory):
            raise InvalidInput(f"{directory!r} is not an absolute directory", field="path")
        conn = self._connection()
        with calls():
            for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                document = pool.XMLDesc(0)
                if pool_type(document) in _FILE_POOL_TYPES and os.path.normpath(pool_target_path(document)) == directory:
                    pool.refresh(0)
                    break
            else:
                pool = None
        if pool is not None:
            yield pool
            return
        name = f"vapor-files-{uuid.uuid4().hex[:12]}"
        try:
            made = conn.storagePoolCreateXML(dir_pool_xml(name, directory), 0)
        except libvirt.libvirtError as exc:
            if "No such file or directory" in (exc.get_error_message() or ""):
                yield None
                return
            raise vapor_error(exc) from exc
        try:
            yield made
        finally:
            with suppress(libvirt.libvirtError):
                made.destroy()

    def domain_job(self, name: str) -> JobProgress | None:
        """The domain's running job (a migration, a save ...) and how far it got; None when none runs."""
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]  # from DomainsMixin
        with calls(field="name"):
            return job_progress(domain.jobStats(0))

    def abort_migration(self, name: str) -> None:
        """Abort the domain's running job; Conflict (code `no_job`) when none runs. The guest stays on the source.

        The aborted `migrate_domain` raises Conflict `migration_aborted`, or (libvirt 9.0, an abort that
        lands while the disks are copied) the HypervisorError of the copy failing ("... Broken pipe").
        """
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]
        try:
            domain.abortJob()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == VIR_ERR_OPERATION_INVALID:
                raise Conflict(f"no job runs on {name}: {exc.get_error_message()}", code="no_job") from exc
            raise vapor_error(exc, field="name") from exc

    def migrate_domain(
        self,
        name: str,
        dest_uri: str,
        *,
        copy_storage: bool,
        dest_address: str | None = None,
        timeout_s: float | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> None:
        """Live-migrate the running domain to `dest_uri` (peer to peer) and return once it runs there.

        Polls the job every POLL_SECONDS and hands its progress to `progress`
        (in this thread). After `timeout_s` the job is aborted and Conflict
        (code `migration_timeout`) raised: the guest keeps running here. An
        exception from `progress` aborts the migration too and is re-raised.
        """
        params = migration_params(dest_address)
        flags = MIGRATE_FLAGS | (libvirt.VIR_MIGRATE_NON_SHARED_DISK if copy_storage else 0)
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]
        outcome: dict[str, BaseException] = {}

        def migrate() -> None:
            try:
                domain.migrateToURI3(dest_uri, params, flags)
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc

        worker = threading.Thread(target=migrate, name=f"migrate-{name}", daemon=True)
        started = time.monotonic()
        worker.start()
        stop_reason: BaseException | None = None
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            if not worker.is_alive():
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                stop_reason = Conflict(
                    f"the migration of {name} to {dest_uri} took longer than {timeout_s:g} s and was aborted; it keeps running here",
                    code="migration_timeout",
                )
                break
            current = self._job_or_none(domain) if progress is not None else None
            if progress is not None and current is not None:
                try:
                    progress(current)
                except BaseException as exc:  # the caller's callback: abort, then re-raise it
                    stop_reason = exc
                    break
        if stop_reason is not None:
            self._abort_and_wait(domain, worker)
            if "error" in outcome:  # the abort (or a failure of its own) ended it: the guest is still here
                raise stop_reason
            logger.warning("the migration of %s to %s completed before its abort (%s)", name, dest_uri, stop_reason)
            return
        error = outcome.get("error")
        if isinstance(error, libvirt.libvirtError):
            raise migration_error(error, name, dest_uri) from error
        if error is not None:
            raise error

    @staticmethod
    def _job_or_none(domain: Any) -> JobProgress | None:
        """The job's progress, or None when it cannot be read: as a migration completes, the source domain
        stops and libvirt answers "domain is not running"; the migration call itself says how it ended."""
        try:
            return job_progress(domain.jobStats(0))
        except libvirt.libvirtError as exc:
            logger.debug("no job statistics for a migrating domain: %s", exc)
            return None

    @staticmethod
    def _abort_and_wait(domain: Any, worker: threading.Thread) -> None:
        """Abort the job and wait for the migration call to return.

        An abort can fail other than by the job having ended: while QEMU's
        monitor is blocked (its NBD connect to a destination that drops the
        packets, until TCP gives up after minutes) libvirt answers "cannot
        acquire state change lock" after 30 s. Then the call is still
        waited for a while; if it goes on, HypervisorError says so.
        """
        refused = ""
        try:
            domain.abortJob()
        except libvirt.libvirtError as exc:
            # OPERATION_INVALID: it ended by itself meanwhile (completed or failed), nothing to abort.
            if exc.get_error_code() != VIR_ERR_OPERATION_INVALID:
                refused = exc.get_error_message() or str(exc)
                logger.warning("could not abort a migration: %s", refused)
        worker.join(_ABORT_WAIT_SECONDS)
        if worker.is_alive():
            why = f" (the abort was refused: {refused})" if refused else ""
            raise HypervisorError(f"the migration could not be stopped: it still runs {_ABORT_WAIT_SECONDS:g} s after its abort{why}")
