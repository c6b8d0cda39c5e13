"""django-q2 entry points for VMs. Thin: take an id, call the service."""

from __future__ import annotations

from vms.services.provisioning import vm_provision


def provision_vm(vm_id: int) -> None:
    vm_provision(vm_id=vm_id)
