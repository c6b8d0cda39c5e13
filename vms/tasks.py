"""django-q2 entry points for VMs. Thin: take an id, call the job (`vms.jobs`) or the service."""

from __future__ import annotations

from vms.jobs import vm_provision
from vms.services.hosts import hosts_check
from vms.services.iso_copies import iso_copies_remove
from vms.services.metrics import metrics_sample
from vms.services.states import vm_refresh_states


def provision_vm(vm_id: int) -> None:
    vm_provision(vm_id=vm_id)


def refresh_vm_states() -> int:
    """Scheduled every minute (migration 0004): store every VM's domain state; remove the copies of deleted
    ISOs that hosts which were down still hold (one query when there are none)."""
    iso_copies_remove()
    return vm_refresh_states()


def sample_metrics() -> int:
    """Scheduled every minute (migration 0012): one metrics round; the number of VM samples written."""
    return metrics_sample().vm_samples


def check_hosts() -> dict[str, str]:
    """Scheduled every minute (migration 0018): read every host in parallel; host name -> up/down."""
    return hosts_check()


def migrate_vm(migration_id: int) -> None:
    """Queued by `vm_migrate` (several hosts: live migration)."""
    from vms.services.migration import vm_migration_run

    vm_migration_run(migration_id=migration_id)
