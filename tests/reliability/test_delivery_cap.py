"""Deliveries that start and never finish (a worker SIGKILLed each time) are capped at max_attempts.

django-q2 counts a delivery only when it finishes, so without Vapor's own
count a task whose worker always dies would be handed out for ever. Each
started delivery is counted on the row; the one past the limit fails the
VM or ISO with the reason and clears what the earlier ones left.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from isos.jobs import iso_run_hash
from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path, iso_rehash
from tests.support.isos import make_iso
from vms.jobs import vm_provision
from vms.models import VirtualMachine

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]
SUITE = "faults: worker killed"


def test_vm_provisioning_gives_up_after_max_attempts_started_deliveries(vm_api, hv, tally):
    with_leftover = {"name": "doomed", "memory": 256, "vcpus": 1, "disks": [{"size": 1}]}
    assert vm_api.post("/api/v1/virtualmachines/create-enhanced", with_leftover, format="json").status_code == 202
    vm = VirtualMachine.objects.get()
    # The earlier deliveries each started (and were killed after the volume was made, before its event).
    hv.create_volume("default", "doomed-disk0.qcow2", 1024**3)
    VirtualMachine.objects.filter(pk=vm.pk).update(attempts=settings.TASK_MAX_ATTEMPTS, claimed_at=None)
    vm_provision(vm_id=vm.pk)
    vm.refresh_from_db()
    left = len(list(hv.pool_dir.iterdir())) + len(hv.domains)
    tally.record(SUITE, "provisioning: a delivery past max_attempts gives up and clears leftovers", refused=vm.status == "failed",
                 leftovers=left, detail=vm.error)  # fmt: skip
    assert vm.status == "failed" and "never finished" in vm.error and vm.attempts == settings.TASK_MAX_ATTEMPTS + 1
    assert left == 0 and hv.calls["define_domain"] == 0


def test_a_delivery_within_the_limit_still_runs(vm_api, hv, tally, run_tasks):
    with run_tasks():
        response = vm_api.post("/api/v1/virtualmachines/create-enhanced", {"name": "ok", "memory": 256, "vcpus": 1}, format="json")
    assert response.status_code == 202
    vm = VirtualMachine.objects.get()
    assert (vm.status, vm.attempts) == ("running", 1)


def test_hashing_gives_up_after_max_attempts_and_a_rehash_starts_afresh(iso_dirs, tally):
    iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "big.iso")), meta=IsoMetadata(), digests=None)
    IsoImage.objects.filter(pk=iso.pk).update(attempts=settings.TASK_MAX_ATTEMPTS)
    iso_run_hash(iso_id=iso.pk)
    iso.refresh_from_db()
    tally.record(SUITE, "hashing: a delivery past max_attempts fails the ISO with the reason", refused=iso.status == "failed",
                 detail=iso.error)  # fmt: skip
    assert iso.status == "failed" and "never finished" in iso.error
    iso_rehash(iso=iso)
    iso.refresh_from_db()
    assert (iso.status, iso.attempts) == ("hashing", 0)
    iso_run_hash(iso_id=iso.pk)
    iso.refresh_from_db()
    assert (iso.status, iso.attempts) == ("ready", 1) and iso.sha256_hash
