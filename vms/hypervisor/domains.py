"""Domain lifecycle: define, start, stop, undefine and read back.

A mixin of `LibvirtDriver`. Start, destroy and undefine are idempotent (a
task may run twice, a domain may stop on its own between two calls); the
guest-side requests (shutdown, reboot) say Conflict when the domain is not
running, because then nothing would happen.
"""

from __future__ import annotations

from typing import Any

import libvirt

from vaporsite.errors import Conflict, HypervisorError, InvalidInput
from vms.hypervisor import DOMAIN_STATES, ConsoleInfo, DiskUse, DomainInfo
from vms.hypervisor._connection import Connection, calls, lookup_or_none, vapor_error
from vms.hypervisor.documents.domain import domain_name, parse_console, parse_disk_files
from vms.hypervisor.errors import (
    VIR_ERR_INVALID_ARG,
    VIR_ERR_NO_DOMAIN,
    VIR_ERR_NO_STORAGE_POOL,
    VIR_ERR_NO_STORAGE_VOL,
    VIR_ERR_OPERATION_INVALID,
)

# Undefine removes everything libvirt keeps beside the definition: NVRAM
# (UEFI variables), swtpm state, a managed-save image, snapshot and
# checkpoint metadata. Left behind, the NVRAM and TPM files would be picked up
# by the next domain of the same name (NVRAM) or linger forever (TPM, by UUID).
_UNDEFINE_ALL = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_TPM
)
# Drivers that reject some flags (libvirt < 8.9 has no TPM flag; the test
# driver takes none): retry with fewer. A driver without NVRAM support has no
# NVRAM to leave behind, and one that has it refuses the plain undefine.
_UNDEFINE_FALLBACKS = (_UNDEFINE_ALL, _UNDEFINE_ALL & ~libvirt.VIR_DOMAIN_UNDEFINE_TPM, 0)


class DomainsMixin(Connection):
    """Persistent domains by name."""

    def domain_exists(self, name: str) -> bool:
        return lookup_or_none(self._connection().lookupByName, name, VIR_ERR_NO_DOMAIN) is not None

    def define_domain(self, xml: str) -> str:
        """Define (not start) a persistent domain and return its UUID.

        libvirt's define *replaces* a domain with the same name and UUID, so
        an existing name is a Conflict checked first; a domain defined by a
        racing caller in between is refused by libvirt (a different UUID) and
        mapped to Conflict too. The XML is validated against libvirt's schema.
        """
        name = domain_name(xml)
        if not name:
            raise InvalidInput("the domain XML has no name", field="name")
        if self.domain_exists(name):
            raise Conflict(f"a domain named '{name}' already exists on the host", field="name")
        with calls(field="name"):
            return self._connection().defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).UUIDString()

    def undefine_domain(self, name: str) -> None:
        """Stop and forget a domain with its NVRAM and TPM state; a missing domain is fine."""
        domain = lookup_or_none(self._connection().lookupByName, name, VIR_ERR_NO_DOMAIN)
        if domain is None:
            return
        self._destroy(domain)
        for flags in _UNDEFINE_FALLBACKS:
            try:
                domain.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                code, words = exc.get_error_code(), exc.get_error_message() or str(exc)
                if code == VIR_ERR_NO_DOMAIN:
                    return
                if not (code == VIR_ERR_INVALID_ARG and "flags" in words and flags):
                    raise vapor_error(exc, field="name") from exc

    def start_domain(self, name: str) -> None:
        """Start a defined domain; one already running is left as it is (a task may run twice)."""
        domain = self._lookup_domain(name)
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            if not (exc.get_error_code() == VIR_ERR_OPERATION_INVALID and domain.isActive()):
                raise vapor_error(exc, field="name") from exc

    def destroy_domain(self, name: str) -> None:
        """Pull the plug; a domain that is not running is left as it is."""
        self._destroy(self._lookup_domain(name))

    def shutdown_domain(self, name: str) -> None:
        """Ask the guest to power off (ACPI); Conflict when it is not running."""
        self._lifecycle(name, "shutdown")

    def reboot_domain(self, name: str) -> None:
        """Ask the guest to reboot; Conflict when it is not running."""
        self._lifecycle(name, "reboot")

    def set_autostart(self, name: str, on: bool) -> None:
        """Mark (or unmark) the domain for start with the host; checked by reading it back.

        libvirt 9.0 answers success when it could not create the autostart
        link (it only logs "Failed to create symlink ..."), so the answer
        alone does not prove the mark is there.
        """
        domain = self._lookup_domain(name)
        with calls(field="name"):
            domain.setAutostart(1 if on else 0)
            recorded = bool(domain.autostart())
        if recorded != on:
            raise HypervisorError(
                f"libvirt answered success, but autostart of domain '{name}' is still {'off' if on else 'on'}"
                " (libvirtd's log says why, e.g. it could not create the autostart link)",
                field="name",
            )

    def domain_autostart(self, name: str) -> bool:
        domain = self._lookup_domain(name)
        with calls(field="name"):
            return bool(domain.autostart())

    def domain_state(self, name: str) -> str:
        """The state in words: running, shutoff, paused, crashed, pmsuspended, blocked, shutdown or nostate."""
        domain = self._lookup_domain(name)
        with calls(field="name"):
            state, _reason = domain.state(0)
        return _state_word(state)

    def domain_xml(self, name: str, inactive: bool = False) -> str:
        """The live (or, `inactive`, the next-boot) definition.

        Never with VIR_DOMAIN_XML_SECURE: without it libvirt leaves graphics
        passwords out, so the XML can be logged and shown.
        """
        domain = self._lookup_domain(name)
        with calls(field="name"):
            return domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)

    def console(self, name: str) -> ConsoleInfo:
        """Where the domain's graphical console listens, and whether it has a password.

        Read from the secure XML, the only one that shows whether a password
        is set; it is parsed here and never returned, logged or kept.
        """
        domain = self._lookup_domain(name)
        with calls(field="name"):
            return parse_console(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))

    def list_domain_names(self) -> list[str]:
        with calls():
            return sorted(domain.name() for domain in self._connection().listAllDomains(0))

    def list_domains(self) -> list[DomainInfo]:
        """Every domain on the host, by name, from one listing plus cheap per-domain reads.

        Listing pages and the state refresh use this instead of one lookup per
        VM. A domain undefined between the listing and its reads is left out,
        as if the listing had come a moment later.
        """
        with calls():
            listed = self._connection().listAllDomains(0)
        domains = []
        for domain in listed:
            try:
                state, _reason = domain.state(0)
                domains.append(
                    DomainInfo(
                        name=domain.name(),
                        uuid=domain.UUIDString(),
                        state=_state_word(state),
                        autostart=bool(domain.autostart()),
                        persistent=bool(domain.isPersistent()),
                    )
                )
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != VIR_ERR_NO_DOMAIN:
                    raise vapor_error(exc) from exc
        return sorted(domains, key=lambda d: d.name)

    def disk_uses(self) -> list[DiskUse]:
        """The files every domain on the host uses, Vapor's or not, running or not.

        A running domain is read twice: its live XML (what QEMU has open,
        with the backing chains libvirt found) and its next-boot definition
        (a disk added for the next start). A volume source is named by its
        path; a volume or pool that is gone names no file. A domain undefined
        meanwhile is left out.
        """
        with calls():
            listed = self._connection().listAllDomains(0)
        uses: set[DiskUse] = set()
        for domain in listed:
            try:
                name = domain.name()
                documents = [domain.XMLDesc(0)]
                if domain.isActive() and domain.isPersistent():
                    documents.append(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != VIR_ERR_NO_DOMAIN:
                    raise vapor_error(exc) from exc
                continue
            for document in documents:
                for file in parse_disk_files(document):
                    path = file.path or self._volume_path(file.pool, file.volume)
                    if path:
                        uses.add(DiskUse(domain=name, path=path, readonly=file.readonly, backing=file.backing))
        return sorted(uses, key=lambda u: (u.domain, u.path, u.readonly, u.backing))

    def _volume_path(self, pool_name: str, volume_name: str) -> str:
        try:
            return str(self._connection().storagePoolLookupByName(pool_name).storageVolLookupByName(volume_name).path())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL):
                return ""
            raise vapor_error(exc) from exc

    def _lookup_domain(self, name: str) -> Any:
        with calls(field="name"):
            return self._connection().lookupByName(name)

    @staticmethod
    def _destroy(domain: Any) -> None:
        try:
            if domain.isActive():
                domain.destroy()
        except libvirt.libvirtError as exc:
            # It stopped (or vanished) between the check and the destroy.
            if exc.get_error_code() not in (VIR_ERR_OPERATION_INVALID, VIR_ERR_NO_DOMAIN):
                raise vapor_error(exc, field="name") from exc

    def _lifecycle(self, name: str, action: str) -> None:
        domain = self._lookup_domain(name)
        try:
            getattr(domain, action)()
        except libvirt.libvirtError as exc:
            words = exc.get_error_message() or str(exc)
            if exc.get_error_code() == VIR_ERR_OPERATION_INVALID:
                raise Conflict(f"cannot {action} domain '{name}': {words}", field="name") from exc
            raise vapor_error(exc, field="name") from exc


def _state_word(state: int) -> str:
    return DOMAIN_STATES[state] if 0 <= state < len(DOMAIN_STATES) else "nostate"
