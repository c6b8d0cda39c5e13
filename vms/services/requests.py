"""A VM request after shape validation: what the caller asked for, typed.

The API serializers (and the legacy endpoint) produce a `VmRequest`; the
services check it against the host and the library (`validation.py`).

`given` names the fields the caller set itself. It matters only with a
template: the template supplies every field not given
(`vms.services.template_apply`). ``None`` means the caller spelled out
everything (the admin form, pre-filled from the template).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiskRequest:
    size: int | None = None  # GB, for a new volume
    path: str | None = None  # an existing disk image
    clone_from: str | None = None  # an image to copy (or overlay, with linked)
    format: str = "qcow2"
    bus: str = "virtio"
    boot_order: int | None = None
    readonly: bool = False
    linked: bool = False
    source_format: str | None = None  # format of `path` / `clone_from`; defaults to `format`
    given: frozenset[str] | None = None

    @property
    def kind(self) -> str:
        """new, existing or clone (a clone may also give `size`: it is grown to it)."""
        return "existing" if self.path is not None else "clone" if self.clone_from is not None else "new"


@dataclass(frozen=True)
class NicRequest:
    type: str = "nat"
    source: str = "default"
    model: str = "virtio"


@dataclass(frozen=True)
class GraphicsRequest:
    type: str = "vnc"
    port: int = -1
    password: str | None = None
    given: frozenset[str] | None = None


@dataclass(frozen=True)
class CloudInitRequest:
    """A `cloud_init` object (NoCloud). None: not given (a template's default, else Vapor's:
    the VM's name as hostname, the requesting user's profile keys)."""

    user_data: str | None = None  # "#cloud-config" YAML or a "#!" script; may hold secrets
    ssh_authorized_keys: tuple[str, ...] | None = None
    hostname: str | None = None
    network_config: str | None = None  # YAML (version 1 or 2)
    meta_data: str | None = None  # YAML mapping, merged under Vapor's instance-id and local-hostname


@dataclass(frozen=True)
class VmRequest:
    name: str
    memory: int  # MB
    vcpus: int
    max_memory: int | None = None  # MB the memory may grow to while the VM runs (None: memory)
    max_vcpus: int | None = None  # vCPUs that may be added while it runs (None: vcpus)
    disks: tuple[DiskRequest, ...] = ()
    iso_path: str | None = None
    secondary_iso: str | None = None
    os_type: str = ""
    os_variant: str = ""
    architecture: str = "x86_64"
    uefi: bool = False
    secure_boot: bool = False
    tpm: bool = False
    networks: tuple[NicRequest, ...] = (NicRequest(),)
    graphics: GraphicsRequest = field(default_factory=GraphicsRequest)
    storage_pool: str = "default"
    autostart: bool = False
    template: str | None = None
    project: str | None = None  # a project's name; None: the template's, else the caller's default (projects.access)
    cloud_init: CloudInitRequest | None = None
    host: str | None = None  # a host's name (issue 15); None: placement chooses
    serial_log: str = ""  # not in the API: tests and diagnostics set it through the service
    given: frozenset[str] | None = None
