"""Fixtures shared by the whole suite."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient


@pytest.fixture(autouse=True, scope="session")
def _tasks_run_inline() -> None:
    """django-q2 runs tasks in the calling thread (they still wait for on_commit)."""
    from django_q.conf import Conf

    Conf.SYNC = True


@dataclasses.dataclass
class IsoDirs:
    search: list[Path]  # VAPOR_ISO_DIRS, in order
    download: Path
    extra_root: Path  # VAPOR_ISO_ROOTS
    outside: Path  # a directory that is in no root


@pytest.fixture
def iso_dirs(tmp_path: Path, settings: pytest.FixtureRequest) -> IsoDirs:
    """Point every ISO directory setting at fresh temporary directories."""
    dirs = IsoDirs(
        search=[tmp_path / "libvirt-iso", tmp_path / "vapor-iso", tmp_path / "share-iso"],
        download=tmp_path / "downloads",
        extra_root=tmp_path / "nfs-isos",
        outside=tmp_path / "elsewhere",
    )
    for directory in (*dirs.search, dirs.download, dirs.extra_root, dirs.outside):
        directory.mkdir()
    settings.VAPOR = dataclasses.replace(  # type: ignore[attr-defined]
        django_settings.VAPOR,
        iso_dirs=tuple(dirs.search),
        download_dir=dirs.download,
        iso_roots=(dirs.extra_root,),
        download_allow_private=True,
        download_allowed_networks=(),
        download_attempts=1,
    )
    return dirs


@pytest.fixture
def run_tasks(django_capture_on_commit_callbacks):
    """Inside `with run_tasks():` queued tasks run when the block ends."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def _user(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username)
    if codenames:
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator(db: None) -> User:
    """A user with every permission on the ISO library (not a superuser)."""
    return _user("operator", "view_isoimage", "add_isoimage", "change_isoimage", "delete_isoimage")


@pytest.fixture
def api(operator: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(operator)
    return client


@pytest.fixture
def vm_api(db: None) -> APIClient:
    """A user with every permission on VMs (and the ISO library), not a superuser."""
    user = User.objects.create_user(username="vmop", password="pw-vmop")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=["vms", "isos"]))
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def viewer_api(db: None) -> APIClient:
    client = APIClient()
    client.force_authenticate(_user("viewer", "view_isoimage"))
    return client


@pytest.fixture
def nobody_api(db: None) -> APIClient:
    """Authenticated, but holding no permission at all."""
    client = APIClient()
    client.force_authenticate(_user("nobody"))
    return client


@pytest.fixture
def anon_api() -> Iterator[APIClient]:
    yield APIClient()


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    """pytest-httpserver on 127.0.0.1 (not "localhost", which may be ::1 first)."""
    return ("127.0.0.1", 0)
