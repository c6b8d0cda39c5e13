"""Helpers for the authorization matrix: roles, a spy on the hypervisor, a fingerprint of the rows."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.apps import apps
from django.contrib.auth.models import Permission, User

from tests.reliability.conftest import Tally
from tests.support.projects import join

# Every row the product writes: VMs, templates, ISOs, projects (with the audit trail) and the task queue.
WATCHED_APPS = ("vms", "isos", "projects", "django_q")


class HypervisorSpy:
    """Wraps the in-memory hypervisor and counts every call made on it (reads included)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted

    def get(self, uri: str | None = None) -> HypervisorSpy:
        """Stands in for `vms.hypervisor.get_hypervisor`: opening a connection counts too."""
        self.calls["get_hypervisor"] += 1
        return self

    def total(self, ignoring: frozenset[str] = frozenset()) -> int:
        return sum(count for name, count in self.calls.items() if name not in ignoring)


# The admin's create page lists the host's pools, networks and bridges (shared by every project, not any
# project's objects) for whoever may create a VM somewhere: those reads are not a cross-project leak.
HOST_LISTING = frozenset({"get_hypervisor", "list_pools", "list_networks", "list_bridges", "close"})


def rows() -> dict[str, dict[Any, str]]:
    """Every watched row, by model and primary key, as text."""
    snapshot: dict[str, dict[Any, str]] = {}
    for label in WATCHED_APPS:
        for model in apps.get_app_config(label).get_models():
            snapshot[model._meta.label] = {
                row["pk"]: repr(sorted(row.items())) for row in model._default_manager.values("pk", *_fields(model))
            }
    return snapshot


def _fields(model: Any) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields if f.attname != model._meta.pk.attname]


def changed_rows(before: dict[str, dict[Any, str]], after: dict[str, dict[Any, str]]) -> int:
    """Rows added, removed or changed between two snapshots."""
    changed = 0
    for label in before.keys() | after.keys():
        old, new = before.get(label, {}), after.get(label, {})
        changed += len(old.keys() ^ new.keys()) + sum(1 for pk in old.keys() & new.keys() if old[pk] != new[pk])
    return changed


def make_role(role: str, project: str | None = None) -> User | None:
    """anonymous (None); viewer or operator: a staff user who is that in `project` (None: the default project)
    and holds no Django permission on VMs (the role grants them), the operator also every ISO permission (the
    library is shared, not a project's); admin: a superuser, or with `project` that project's admin."""
    if role == "anonymous":
        return None
    if role == "admin" and project is None:
        return User.objects.create_superuser("admin-role", password=None)  # no password hashing: logged in with force_login
    user = User.objects.create_user(f"{role}-role" + (f"-{project}" if project else ""), password=None, is_staff=True)
    if role in ("operator", "admin"):
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="isos"))
    join(user, role, project)
    return user


def record_allowed(tally: Tally, suite: str, case: str, *, effect: bool, detail: str = "") -> None:
    """An allowed cell, in the tally beside the refusals: `allowed` marks it, `effect` says whether the action
    did what it does (tests/reliability/plugin.py counts these apart from the refused cells)."""
    tally.path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"suite": suite, "case": case, "allowed": True, "effect": effect, "refused": False, "leftovers": 0, "detail": detail}
    with tally.path.open("a") as out:
        out.write(json.dumps(entry) + "\n")
