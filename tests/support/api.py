"""Calling the VM API the way most tests do: create-enhanced, with its queued task run on commit."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from rest_framework.test import APIClient

from vms.models import VirtualMachine

CREATE_URL = "/api/v1/virtualmachines/create-enhanced"

RunTasks = Callable[[], AbstractContextManager[Any]]  # the `run_tasks` fixture


def post_create(client: APIClient, run_tasks: RunTasks, payload: dict[str, Any], url: str = CREATE_URL) -> Any:
    """POST the payload; the provisioning task it queues has run when this returns. The response, whatever it is."""
    with run_tasks():
        return client.post(url, payload, format="json")


def create_vm(client: APIClient, run_tasks: RunTasks, payload: dict[str, Any]) -> VirtualMachine:
    """POST the payload, which must be accepted (202); the VM row once its task has run."""
    response = post_create(client, run_tasks, payload)
    assert response.status_code == 202, response.json()
    return VirtualMachine.objects.get(pk=response.json()["id"])
