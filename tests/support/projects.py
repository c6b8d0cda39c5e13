"""Projects for tests: members with a role."""

from __future__ import annotations

from typing import Any

from projects.models import Membership, Project, default_project_pk


def join(user: Any, role: str, project: Project | str | None = None) -> Membership:
    """Make `user` a member of `project` (a name is made if missing; None: the default project) with `role`."""
    if isinstance(project, str):
        project = Project.objects.get_or_create(name=project)[0]
    project_id = project.pk if project is not None else default_project_pk()
    return Membership.objects.create(user=user, project_id=project_id, role=role)
