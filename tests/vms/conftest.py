"""Fixtures for the VM tests that run against the in-memory hypervisor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.fakes import FakeHypervisor
from tests.support.images import make_image


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


@pytest.fixture
def base_image(disk_root: Path) -> Path:
    """An 8 GB qcow2 base image in the disk root, for templates to clone."""
    return make_image(disk_root / "ubuntu-base.qcow2", "8G")
