"""A file given to QEMU must sit in directories QEMU's user can search (issue 11, the 0700 row).

libvirt makes the file itself QEMU's, never the directories above it: an ISO
in a 0700 directory was accepted and the VM failed at start with "Permission
denied". Now `iso_path` and ISO registration by path answer 400 naming the
field and the directory. Real files and directories with real modes and
ACLs; the user checked is `nobody` (VAPOR_QEMU_USER), whom root's 0700
directories shut out. tests/integration/test_qemu_reach.py runs it against
the real daemon's user.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from isos.models import IsoImage
from tests.support.api import CREATE_URL
from tests.support.isos import make_iso
from vaporsite.paths import can_search, identity
from vms.models import VirtualMachine

NOBODY = identity("nobody")
assert NOBODY is not None


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A `system.posix_acl_access` value: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


ANY = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def folder(parent: Path, name: str, mode: int) -> Path:
    path = parent / name
    path.mkdir()
    path.chmod(mode)
    return path


def test_search_permission_follows_mode_bits_and_acls(tmp_path: Path):
    assert NOBODY is not None
    assert not can_search(folder(tmp_path, "private", 0o700), NOBODY)
    assert not can_search(folder(tmp_path, "group-only", 0o750), NOBODY)
    assert not can_search(folder(tmp_path, "readable-not-searchable", 0o744), NOBODY)
    assert can_search(folder(tmp_path, "open", 0o711), NOBODY)
    granted = folder(tmp_path, "acl-granted", 0o700)
    entries = [(USER_OBJ, 7, ANY), (USER, 1, NOBODY.uid), (GROUP_OBJ, 0, ANY)]
    os.setxattr(granted, "system.posix_acl_access", acl(*entries, (MASK, 1, ANY), (OTHER, 0, ANY)))
    assert can_search(granted, NOBODY)
    masked = folder(tmp_path, "acl-masked", 0o700)
    os.setxattr(masked, "system.posix_acl_access", acl(*entries, (MASK, 0, ANY), (OTHER, 1, ANY)))
    assert not can_search(masked, NOBODY)  # the mask takes the named entry's x away; "other" does not apply to a named user
    assert can_search(folder(tmp_path, "root-sees-all", 0o700), dataclasses.replace(NOBODY, uid=0))


@pytest.fixture
def iso_root(settings, iso_dirs) -> Iterator[Path]:
    """An ISO root QEMU's user can reach (pytest's own directories are 0700), and QEMU running as nobody."""
    root = Path(tempfile.mkdtemp(prefix="vapor-reach-", dir="/var/tmp"))
    root.chmod(0o755)
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, qemu_user="nobody", iso_roots=(root,))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.django_db
def test_an_iso_in_a_directory_qemu_cannot_search_is_refused_naming_it(vm_api, hv, run_tasks, iso_root: Path):
    home = folder(iso_root, "home-of-someone", 0o700)
    iso = make_iso(home / "installer.iso")

    payload = {"name": "v", "memory": 256, "vcpus": 1, "disks": [{"size": 1}], "iso_path": str(iso)}
    response = vm_api.post(CREATE_URL, payload, format="json")
    assert response.status_code == 400 and response.json()["field"] == "iso_path", response.json()
    assert response.json()["code"] == "path_not_searchable"
    assert f"QEMU runs as nobody, which cannot search the directory {home} (mode 0700)" in response.json()["detail"]

    response = vm_api.post("/api/v1/virtualmachines/isos", {"path": str(iso)}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "path", response.json()
    assert str(home) in response.json()["detail"]
    assert IsoImage.objects.count() == 0 and VirtualMachine.objects.count() == 0 and hv.calls["create_volume"] == 0

    home.chmod(0o711)  # searchable, not listable: enough for QEMU
    with run_tasks():  # hashed: ready
        response = vm_api.post("/api/v1/virtualmachines/isos", {"path": str(iso)}, format="json")
    assert response.status_code == 201, response.json()
    assert IsoImage.objects.get().status == "ready"

    home.chmod(0o700)  # closed again after registration: a path reference to the library's ISO is refused too
    response = vm_api.post(CREATE_URL, payload, format="json")
    assert response.status_code == 400 and response.json()["field"] == "iso_path", response.json()
    assert VirtualMachine.objects.count() == 0
