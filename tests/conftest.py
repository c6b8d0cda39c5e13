"""Fixtures and hooks shared by the whole suite.

Two hooks decide what runs:
- under CI (`CI` set, as `.ci/run` does), a skipped `libvirt` or `browser`
  test is a failure: those tiers exist to be proven, and a skip would let a
  machine without them go green;
- with `--db-only` (the PostgreSQL pass of scripts/test.sh), only tests that
  touch the database run (the `django_db` marker, a database fixture, directly
  or through another fixture) plus the `postgres`-marked ones: the rest cannot
  behave differently on PostgreSQL, and running them twice only inflates the
  count.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from projects.choices import Role
from projects.models import Membership, default_project_pk

# Markers of the tiers a CI run must never skip.
NEVER_SKIPPED_IN_CI = ("libvirt", "browser")
# Where those tiers live: a module there that skips itself as a whole is never collected, so no marker is seen.
TIER_DIRS = (Path(__file__).parent / "integration", Path(__file__).parent / "multihost", Path(__file__).parent / "browser")
# Fixtures that open the test database; a test depends on one of them directly or
# through its own fixtures (api, operator...), and item.fixturenames lists the closure.
DATABASE_FIXTURES = frozenset({"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server"})


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_in_ci(reason: str) -> NoReturn:
    """A precondition of a real-daemon test is missing: a skip on a workstation, a failure under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: this tier may not be skipped)", pytrace=False)
    pytest.skip(reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db-only",
        action="store_true",
        help="run only the tests that use the database (and the `postgres`-marked ones); scripts/test.sh's PostgreSQL pass",
    )


def uses_database(item: pytest.Item) -> bool:
    if item.get_closest_marker("django_db") or item.get_closest_marker("postgres"):
        return True
    return not DATABASE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--db-only"):
        return
    kept = [item for item in items if uses_database(item)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if not uses_database(item)])
        items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    tiers = [name for name in NEVER_SKIPPED_IN_CI if item.get_closest_marker(name)]
    if not tiers:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped a {'/'.join(tiers)} test under CI, which must run every tier: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and any(Path(collector.path).is_relative_to(tier) for tier in TIER_DIRS):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"{collector.nodeid} skipped itself as a whole under CI, which must run every tier: {reason}"


@pytest.fixture(autouse=True, scope="session")
def _tasks_run_inline() -> None:
    """django-q2 runs tasks in the calling thread (they still wait for on_commit)."""
    from django_q.conf import Conf

    Conf.SYNC = True


@pytest.fixture(autouse=True)
def _fresh_hypervisor_connections() -> Iterator[None]:
    """Each test starts without the connections an earlier one kept (vms.hypervisor keeps one per host
    and process): the libvirt test driver's state lives as long as a connection to it does."""
    from vms.hypervisor import forget_hypervisors

    forget_hypervisors()
    yield
    forget_hypervisors()


@pytest.fixture(autouse=True)
def _no_qemu_user_off_the_daemon(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the real daemon no QEMU opens anything, and the tests' files live in pytest's 0700
    directories: the check that QEMU's user can reach a file (VAPOR_QEMU_USER) is off, for this
    process and the portals it starts. `libvirt` tests keep it; a test of the check turns it on."""
    if request.node.get_closest_marker("libvirt") is None:
        settings = request.getfixturevalue("settings")
        settings.VAPOR = dataclasses.replace(django_settings.VAPOR, qemu_user="")
        monkeypatch.setenv("VAPOR_QEMU_USER", "")


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
    Membership.objects.create(user=user, project_id=default_project_pk(), role=Role.ADMIN)  # the VMs and templates it makes go there
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
