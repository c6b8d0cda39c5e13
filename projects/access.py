"""Who may do what in which project, who did it, and what it used.

Every service that acts on a VM or a template takes an `Actor`: the person
(or `SYSTEM`, for management commands and the worker), the source address and
the way in (API, admin, command). Entry points build it with `actor_from_request`;
services call `require` before they act and `audit` once they have.

Reads are scoped by `visible_projects`: a user sees the projects they are a
member of (superusers see all). An object in a project the caller cannot see
is answered as if it did not exist (404); one they can see but not change is
refused with 403.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from projects.choices import RANK, Role, Via, at_least
from projects.models import DEFAULT_PROJECT, AuditEntry, Membership, Project
from vaporsite.errors import Forbidden, InvalidInput, NotFound

log = logging.getLogger("vapor.projects")


@dataclass(frozen=True)
class Actor:
    user: Any = None  # a django.contrib.auth user; None for SYSTEM
    source_address: str | None = None
    via: str = Via.COMMAND

    @property
    def is_system(self) -> bool:
        return self.user is None

    @property
    def sees_all(self) -> bool:
        return self.user is None or bool(self.user.is_superuser)

    @property
    def name(self) -> str:
        return self.user.get_username() if self.user is not None else "system"


SYSTEM = Actor()


def actor_from_request(request: Any, via: str) -> Actor:
    """The request's user and the address it came from (the peer: a proxy in front should be trusted explicitly)."""
    user = getattr(request, "user", None)
    address = (getattr(request, "META", {}) or {}).get("REMOTE_ADDR") or None
    return Actor(user=user if user is not None and user.is_authenticated else None, source_address=address, via=via)


def visible_projects(actor: Actor | Any, role: str = Role.VIEWER) -> QuerySet[Project]:
    """Projects where `actor` (an Actor or a user) holds at least `role`; every project for superusers and SYSTEM."""
    user = actor.user if isinstance(actor, Actor) else actor
    if user is None or user.is_superuser:
        return Project.objects.all()
    if not user.is_authenticated:
        return Project.objects.none()
    return Project.objects.filter(memberships__user=user, memberships__role__in=at_least(role)).distinct()


def in_visible_projects(queryset: QuerySet[Any], actor: Actor | Any, role: str = Role.VIEWER) -> QuerySet[Any]:
    """`queryset` (of objects with a `project`) narrowed to the projects where `actor` (an Actor or a user)
    holds at least `role`; unchanged for superusers and SYSTEM. The one place reads are scoped."""
    user = actor.user if isinstance(actor, Actor) else actor
    if user is None or user.is_superuser:
        return queryset
    return queryset.filter(project__in=visible_projects(user, role))


def role_of(actor: Actor, project: Project) -> str | None:
    """The actor's role in `project`: admin for superusers and SYSTEM, None for a non-member."""
    if actor.sees_all:
        return Role.ADMIN
    return Membership.objects.filter(project=project, user=actor.user).values_list("role", flat=True).first()


def require(actor: Actor, project: Project, role: str, what: str) -> None:
    """Refuse unless `actor` holds at least `role` in `project`: 404 for a non-member (the object is not theirs
    to know of), 403 for a member with a weaker role."""
    held = role_of(actor, project)
    if held is None:
        raise NotFound(f"{what} does not exist", code="not_found")
    if RANK[Role(held)] < RANK[Role(role)]:
        raise Forbidden(f"{actor.name} is {held} in project {project.name}; {what} needs the {role} role", code="forbidden")


def project_for_create(actor: Actor, name: str | None, *, fallback: Project | None = None, field: str = "project") -> Project:
    """The project a new VM or template goes to: the one named, else `fallback` (a template's), else `default`
    when the actor may create there, else the only project where the actor may. The actor must be an operator there."""
    if name:
        project = Project.objects.filter(name=name).first()
        if project is None or role_of(actor, project) is None:
            names = ", ".join(visible_projects(actor, Role.OPERATOR).values_list("name", flat=True)[:10]) or "none"
            raise NotFound(f"project {name!r} does not exist or is not yours (yours: {names})", field=field, code="project_not_found")
        _require_operator(actor, project, field)
        return project
    if fallback is not None and (held := role_of(actor, fallback)) is not None and RANK[Role(held)] >= RANK[Role.OPERATOR]:
        return fallback
    creatable = visible_projects(actor, Role.OPERATOR)
    default = creatable.filter(name=DEFAULT_PROJECT).first()
    if default is not None:
        return default
    if actor.sees_all:
        return Project.objects.get_or_create(name=DEFAULT_PROJECT)[0]
    choices = list(creatable.values_list("name", flat=True)[:11])
    if len(choices) == 1:
        return creatable.get()
    if not choices:
        raise Forbidden(f"{actor.name} is operator in no project, so may create nothing", field=field, code="forbidden")
    raise InvalidInput(f"name the project: {actor.name} may create in several ({', '.join(choices[:10])})", field=field, code="required")


def _require_operator(actor: Actor, project: Project, field: str) -> None:
    held = role_of(actor, project)
    if held is None or RANK[Role(held)] < RANK[Role.OPERATOR]:
        raise Forbidden(
            f"{actor.name} is {held or 'not a member'} in project {project.name}; creating there needs the operator role",
            field=field,
            code="forbidden",
        )


def check_allowed(project: Project, *, kind: str, name: str, field: str) -> None:
    """400 when the project is restricted to other pools, networks or bridges (`kind`)."""
    allowed = {"pool": project.pools, "network": project.networks, "bridge": project.bridges}[kind]
    if allowed and name not in allowed:
        raise InvalidInput(
            f"{kind} {name!r} is not open to project {project.name} (allowed: {', '.join(allowed)})",
            field=field,
            code="not_allowed_in_project",
        )


def audit(actor: Actor, action: str, *, target: str, project: Project | None, vm_id: int | None = None, detail: str = "") -> AuditEntry:
    """Record one action with its user, address and way in."""
    entry = AuditEntry.objects.create(
        user=actor.user,
        username=actor.name if actor.user is not None else "",
        source_address=actor.source_address,
        via=actor.via,
        project=project,
        action=action,
        target=target,
        vm_id=vm_id,
        detail=detail,
    )
    log.info("audit: %s via %s from %s: %s %s", actor.name, actor.via, actor.source_address or "-", action, target)
    return entry
