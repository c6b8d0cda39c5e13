"""Fixtures for the VM tests that run against the in-memory hypervisor."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from tests.fakes import FakeHypervisor


@pytest.fixture
def hv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings) -> FakeHypervisor:
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    fake = FakeHypervisor(pool_dir=pool_dir)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", lambda uri=None: fake)
    return fake


@pytest.fixture
def disk_root(tmp_path: Path, settings) -> Path:
    """A directory in VAPOR_DISK_ROOTS holding templates and shared disks."""
    root = tmp_path / "shared"
    root.mkdir()
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, disk_roots=(root,), virt_type="auto")
    return root


def make_image(path: Path, size: str = "64M", fmt: str = "qcow2", *options: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options, str(path), size], check=True)
    return path


@pytest.fixture
def vm_api(db: None) -> APIClient:
    user = User.objects.create_user("vmop", password="pw")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="vms"))
    client = APIClient()
    client.force_authenticate(user)
    return client
