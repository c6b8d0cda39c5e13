"""cloud-init (NoCloud): checking a `cloud_init` object, planning and building the VM's seed ISO.

The seed is an ISO 9660 image (Joliet and Rock Ridge names) with the volume
label `cidata` holding `user-data`, `meta-data` and `network-config`, built
in memory with pycdlib and uploaded into the VM's pool as `<vm>-cidata.iso`
(a step of provisioning, undone on failure), attached as a read-only SATA
CD-ROM and deleted with the VM.

user_data may hold secrets. It is stored encrypted, never written to a log,
an event, the audit trail or an error message (a YAML error names the line and
column, never the text), and shown only to users who may change the VM.
The SSH keys go into meta-data's `public-keys` (cloud-init gives them to the
default user whatever user-data is: a `#cloud-config` or a script).
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from projects.access import Actor
from vaporsite.errors import Conflict, InvalidInput
from vms import encryption
from vms.cloud_init_models import TemplateCloudInit, VmCloudInit
from vms.hypervisor import Hypervisor, PoolInfo, volume_exists
from vms.hypervisor.specs import CdromSpec
from vms.models import VirtualMachine, VmTemplate
from vms.services.requests import CloudInitRequest
from vms.services.ssh_keys import parse_public_key, user_keys

FIELDS = ("user_data", "ssh_authorized_keys", "hostname", "network_config", "meta_data")
MAX_USER_DATA = 256 * 1024  # bytes of user-data; the seed is built in memory
MAX_DOCUMENT = 64 * 1024  # network-config and meta-data
MAX_KEYS = 100
SEED_LABEL = "cidata"
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
DEFAULT_NETWORK_CONFIG = 'version: 2\nethernets:\n  vapor-all:\n    match:\n      name: "e*"\n    dhcp4: true\n'


@dataclass(frozen=True)
class PlannedCloudInit:
    """The seed a create will build: every field decided (hostname, keys), its volume and CD-ROM."""

    user_data: str | None
    ssh_authorized_keys: tuple[str, ...]
    hostname: str
    network_config: str
    meta_data: str
    volume_name: str
    path: str
    target_dev: str
    keys_from_profile: bool


# --- checks ------------------------------------------------------------------------


def _field(name: str) -> str:
    return f"cloud_init.{name}"


def _yaml(text: str, field: str, what: str) -> Any:
    """`text` parsed as YAML; a mistake is reported by line and column, never with the text itself."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = _QUOTED.sub("'…'", exc.problem or exc.context or "syntax error")
        if mark is None:
            raise InvalidInput(f"{what} is not valid YAML: {problem}", field=field) from None
        line, column = mark.line + 1, mark.column + 1
        raise InvalidInput(
            f"{what} is not valid YAML: {problem} at line {line}, column {column}", field=field, line=line, column=column
        ) from None
    except yaml.YAMLError:
        raise InvalidInput(f"{what} is not valid YAML", field=field) from None


def check_user_data(text: str) -> None:
    field = _field("user_data")
    if len(text.encode()) > MAX_USER_DATA:
        raise InvalidInput(f"must be at most {MAX_USER_DATA} bytes", field=field)
    first = text.split("\n", 1)[0].rstrip()
    if first == "#cloud-config":
        data = _yaml(text, field, "user_data")
        if data is not None and not isinstance(data, dict):
            raise InvalidInput("a #cloud-config must be a YAML mapping (key: value lines)", field=field, line=1, column=1)
    elif not first.startswith("#!"):
        raise InvalidInput("must start with a '#cloud-config' line (YAML) or '#!' (a script)", field=field, line=1, column=1)


def check_hostname(name: str, *, field: str = "cloud_init.hostname") -> None:
    """RFC 1123: dot-separated labels of 1-63 letters, digits and '-', not starting or ending with '-'; 253 at most."""
    if not isinstance(name, str) or not 1 <= len(name) <= 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidInput(
            "must be an RFC 1123 host name: labels of 1-63 letters, digits and '-' (not first or last), "
            "separated by '.', 253 characters at most",
            field=field,
        )


def default_hostname(vm_name: str) -> str:
    """The VM's name made a host name: '_' and other characters become '-', labels trimmed to 63."""
    labels = [re.sub(r"[^A-Za-z0-9-]", "-", label).strip("-")[:63].strip("-") for label in vm_name.split(".")]
    return ".".join(label for label in labels if label) or "vm"


def _check_document(text: str, name: str, *, network: bool) -> None:
    field = _field(name)
    if len(text.encode()) > MAX_DOCUMENT:
        raise InvalidInput(f"must be at most {MAX_DOCUMENT} bytes", field=field)
    data = _yaml(text, field, name)
    if not isinstance(data, dict):
        raise InvalidInput(f"{name} must be a YAML mapping", field=field)
    if network:
        inner = data.get("network", data) if set(data) == {"network"} else data
        if not isinstance(inner, dict) or inner.get("version") not in (1, 2):
            raise InvalidInput("network_config must say `version: 1` or `version: 2` (cloud-init's network formats)", field=field)


def cloud_init_check(cloud_init: CloudInitRequest | None) -> None:
    """Every rule that needs nothing but the object (also a template's defaults); the first problem is raised."""
    if cloud_init is None:
        return
    if cloud_init.user_data is not None:
        check_user_data(cloud_init.user_data)
    keys = cloud_init.ssh_authorized_keys or ()
    if len(keys) > MAX_KEYS:
        raise InvalidInput(f"at most {MAX_KEYS} keys", field=_field("ssh_authorized_keys"))
    for index, key in enumerate(keys):
        parse_public_key(key, field=f"cloud_init.ssh_authorized_keys[{index}]")
    if cloud_init.hostname is not None:
        check_hostname(cloud_init.hostname)
    if cloud_init.network_config is not None:
        _check_document(cloud_init.network_config, "network_config", network=True)
    if cloud_init.meta_data is not None:
        _check_document(cloud_init.meta_data, "meta_data", network=False)


def cloud_init_merge(base: CloudInitRequest | None, override: CloudInitRequest | None) -> CloudInitRequest | None:
    """A template's defaults `base` with the fields the request gives (`override`) in their place."""
    if base is None or override is None:
        return override or base
    return replace(base, **{name: getattr(override, name) for name in FIELDS if getattr(override, name) is not None})


# --- planning and storing a VM's seed -----------------------------------------------------


def cloud_init_plan(
    *, vm_name: str, cloud_init: CloudInitRequest | None, hv: Hypervisor, pool: PoolInfo, target_dev: str, actor: Actor
) -> PlannedCloudInit | None:
    """The seed of a VM being created (None without `cloud_init`). Keys: those given, else the requester's profile keys."""
    if cloud_init is None:
        return None
    keys = tuple(
        parse_public_key(k, field=f"cloud_init.ssh_authorized_keys[{i}]").line for i, k in enumerate(cloud_init.ssh_authorized_keys or ())
    )
    from_profile = not keys
    if from_profile:
        keys = tuple(user_keys(actor.user))
    volume_name = f"{vm_name}-cidata.iso"
    path = str(Path(pool.path) / volume_name)
    if volume_exists(hv, pool.name, volume_name) or Path(path).exists() or Path(path).is_symlink():
        raise Conflict(f"volume {volume_name} already exists in pool {pool.name}", field="cloud_init", code="volume_exists")
    return PlannedCloudInit(
        user_data=cloud_init.user_data,
        ssh_authorized_keys=keys,
        hostname=cloud_init.hostname or default_hostname(vm_name),
        network_config=cloud_init.network_config or "",
        meta_data=cloud_init.meta_data or "",
        volume_name=volume_name,
        path=path,
        target_dev=target_dev,
        keys_from_profile=from_profile,
    )


def cloud_init_store(*, vm: VirtualMachine, planned: PlannedCloudInit | None) -> None:
    if planned is None:
        return
    VmCloudInit.objects.create(
        vm=vm,
        user_data_encrypted=encryption.encrypt(planned.user_data) if planned.user_data is not None else "",
        has_user_data=planned.user_data is not None,
        ssh_authorized_keys=list(planned.ssh_authorized_keys),
        hostname=planned.hostname,
        network_config=planned.network_config,
        meta_data=planned.meta_data,
        volume_name=planned.volume_name,
        path=planned.path,
        target_dev=planned.target_dev,
        instance_id=f"vapor-{vm.uuid or uuid.uuid4()}",
    )


def seed_of(vm: VirtualMachine) -> VmCloudInit | None:
    try:
        return vm.cloud_init
    except VmCloudInit.DoesNotExist:
        return None


def seed_cdroms(vm: VirtualMachine) -> tuple[CdromSpec, ...]:
    """The seed's CD-ROM in the domain (read-only, raw, SATA), after the ISOs'; none without cloud-init."""
    seed = seed_of(vm) if vm.pk else None
    return (CdromSpec(path=seed.path, target_dev=seed.target_dev),) if seed else ()


def seed_files_to_delete(vm: VirtualMachine) -> list[tuple[str, str, str]]:
    """(path, what, volume) of the seed a delete erases: always, even when the disks are kept."""
    seed = seed_of(vm)
    return [(seed.path, "the cloud-init seed ISO Vapor made", seed.volume_name)] if seed else []


# --- the seed's files and image -------------------------------------------------------


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=1_000_000, allow_unicode=True)


def seed_files(seed: VmCloudInit) -> dict[str, bytes]:
    """user-data, meta-data and network-config as the guest reads them."""
    user_data = encryption.decrypt(seed.user_data_encrypted) if seed.has_user_data else None
    if seed.has_user_data and user_data is None:
        raise InvalidInput("the stored user_data cannot be decrypted (was VAPOR_VNC_KEY changed?)", field="cloud_init.user_data")
    meta: dict[str, Any] = dict(yaml.safe_load(seed.meta_data) or {}) if seed.meta_data else {}
    meta.update({"instance-id": seed.instance_id, "local-hostname": seed.hostname})
    if seed.ssh_authorized_keys:
        meta["public-keys"] = list(seed.ssh_authorized_keys)
    return {
        "user-data": (user_data if user_data is not None else "#cloud-config\n").encode(),
        "meta-data": _dump(meta).encode(),
        "network-config": (seed.network_config or DEFAULT_NETWORK_CONFIG).encode(),
    }


def seed_iso(files: dict[str, bytes]) -> bytes:
    """An ISO 9660 image labelled `cidata` holding `files` under their own names (Rock Ridge and Joliet)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for name, data in files.items():
        short = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:30]
        iso.add_fp(io.BytesIO(data), len(data), f"/{short}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


# --- templates -------------------------------------------------------------------------


def template_cloud_init(template: VmTemplate) -> CloudInitRequest | None:
    """A template's defaults, None when it has none."""
    try:
        row: TemplateCloudInit = template.cloud_init
    except TemplateCloudInit.DoesNotExist:
        return None
    given = set(row.given)
    user_data = encryption.decrypt(row.user_data_encrypted) if "user_data" in given else None
    return CloudInitRequest(
        user_data=user_data,
        ssh_authorized_keys=tuple(row.ssh_authorized_keys) if "ssh_authorized_keys" in given else None,
        hostname=row.hostname if "hostname" in given else None,
        network_config=row.network_config if "network_config" in given else None,
        meta_data=row.meta_data if "meta_data" in given else None,
    )


def template_cloud_init_store(*, template: VmTemplate, cloud_init: CloudInitRequest | None) -> None:
    """Replace the template's defaults with `cloud_init` (None: no defaults)."""
    TemplateCloudInit.objects.filter(template=template).delete()
    if cloud_init is None:
        return
    TemplateCloudInit.objects.create(
        template=template,
        given=[name for name in FIELDS if getattr(cloud_init, name) is not None],
        user_data_encrypted=encryption.encrypt(cloud_init.user_data) if cloud_init.user_data is not None else "",
        has_user_data=cloud_init.user_data is not None,
        ssh_authorized_keys=list(cloud_init.ssh_authorized_keys or ()),
        hostname=cloud_init.hostname or "",
        network_config=cloud_init.network_config or "",
        meta_data=cloud_init.meta_data or "",
    )
