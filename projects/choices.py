"""Roles of a project's members, weakest first."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    """viewer: sees the project's VMs and templates; operator: also creates, powers, changes and deletes them;
    admin: also sees the project's audit trail and manages its members."""

    VIEWER = "viewer", "viewer"
    OPERATOR = "operator", "operator"
    ADMIN = "admin", "admin"


RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def at_least(role: str) -> list[str]:
    """The roles that include `role`."""
    return [r for r, rank in RANK.items() if rank >= RANK[Role(role)]]


class Via(models.TextChoices):
    API = "api", "API"
    ADMIN = "admin", "admin"
    COMMAND = "command", "management command or worker"
