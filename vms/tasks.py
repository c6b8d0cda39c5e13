"""django-q2 entry points for VMs. Thin: take an id, call the job (`vms.jobs`) or the service."""

from __future__ import annotations

from vms.jobs import vm_provision
from vms.services.metrics import metrics_sample
from vms.services.states import vm_refresh_states


def provision_vm(vm_id: int) -> None:
    vm_provision(vm_id=vm_id)


def refresh_vm_states() -> int:
    """Scheduled every minute (migration 0004): store every VM's domain state."""
    return vm_refresh_states()


def sample_metrics() -> int:
    """Scheduled every minute (migration 0012): one metrics round; the number of VM samples written."""
    return metrics_sample().vm_samples


def migrate_vm(migration_id: int) -> None:
    """Queued by `vm_migrate` (several hosts: live migration)."""
    from vms.services.migration import vm_migration_run

    vm_migration_run(migration_id=migration_id)
