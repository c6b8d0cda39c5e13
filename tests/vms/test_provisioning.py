"""Provisioning steps, rollback, idempotency and the lifecycle, on the in-memory hypervisor."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.support.api import create_vm
from tests.support.images import make_image, sha256
from vaporsite.errors import HypervisorError
from vms.jobs import vm_provision
from vms.models import VirtualMachine, VmEvent

pytestmark = pytest.mark.django_db


def steps(vm: VirtualMachine) -> list[tuple[str, str]]:
    return [(e.step, e.status) for e in vm.events.exclude(step="accepted")]


def test_failure_after_volumes_undoes_them_and_keeps_existing_disks(vm_api, hv, run_tasks, disk_root):
    existing = make_image(disk_root / "keep.qcow2")
    before = sha256(existing)
    hv.fail["define_domain"] = HypervisorError("XML error: something libvirt did not like")
    vm = create_vm(vm_api, run_tasks, {"name": "rb", "memory": 512, "vcpus": 1,
                                    "disks": [{"size": 1}, {"size": 2}, {"path": str(existing)}]})  # fmt: skip
    assert vm.status == "failed"
    assert vm.error == "define domain failed: XML error: something libvirt did not like"
    assert steps(vm) == [
        ("create volume rb-disk0.qcow2", "done"),
        ("create volume rb-disk1.qcow2", "done"),
        ("define domain", "failed"),
        ("create volume rb-disk1.qcow2", "undone"),
        ("create volume rb-disk0.qcow2", "undone"),
    ]
    assert list(hv.pool_dir.iterdir()) == [] and hv.domains == {}
    assert sha256(existing) == before


def test_failure_at_start_undefines_the_domain(vm_api, hv, run_tasks):
    hv.fail["start_domain"] = HypervisorError("internal error: process exited while connecting to monitor")
    vm = create_vm(vm_api, run_tasks, {"name": "st", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "autostart": True})
    assert vm.status == "failed" and "start domain failed" in vm.error
    assert ("define domain", "undone") in steps(vm)
    assert hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_second_volume_failing_removes_only_the_first(vm_api, hv, run_tasks):
    hv.fail["create_volume"] = HypervisorError("no space left on device")
    hv.fail_after["create_volume"] = 1
    vm = create_vm(vm_api, run_tasks, {"name": "sp", "memory": 512, "vcpus": 1, "disks": [{"size": 1}, {"size": 1}]})
    assert steps(vm) == [("create volume sp-disk0.qcow2", "done"), ("create volume sp-disk1.qcow2", "failed"),
                         ("create volume sp-disk0.qcow2", "undone")]  # fmt: skip


def test_a_task_delivered_twice_does_nothing_twice(vm_api, hv, run_tasks, disk_root):
    base = make_image(disk_root / "base.qcow2")
    vm = create_vm(vm_api, run_tasks, {"name": "tw", "memory": 512, "vcpus": 1, "disks": [{"clone_from": str(base)}]})
    assert vm.status == "running"
    vm_provision(vm_id=vm.pk)  # the broker hands it out again
    assert hv.calls["clone_volume"] == 1 and hv.calls["define_domain"] == 1


def test_redelivery_after_a_crash_skips_finished_steps_and_redoes_a_partial_clone(vm_api, hv, run_tasks, disk_root):
    base = make_image(disk_root / "base.qcow2")
    hv.fail["define_domain"] = KeyboardInterrupt()  # the worker dies: no rollback runs
    with pytest.raises(KeyboardInterrupt):
        create_vm(vm_api, run_tasks, {"name": "cr", "memory": 512, "vcpus": 2, "disks": [{"size": 1}, {"clone_from": str(base)}]})
    vm = VirtualMachine.objects.get(name="cr")
    assert vm.status == "provisioning"
    VmEvent.objects.filter(vm=vm, step__startswith="clone").delete()  # as if it died during the copy
    VirtualMachine.objects.filter(pk=vm.pk).update(claimed_at=None)
    del hv.fail["define_domain"]
    vm_provision(vm_id=vm.pk)
    vm.refresh_from_db()
    assert vm.status == "running", vm.error
    assert hv.calls["create_volume"] == 1  # not created twice
    assert hv.calls["clone_volume"] == 2  # the unfinished clone was cleared and made again
    assert ("create volume cr-disk0.qcow2", "skipped") in steps(vm)


def test_lifecycle_actions_and_delete(vm_api, hv, run_tasks, disk_root):
    existing = make_image(disk_root / "data.qcow2")
    vm = create_vm(vm_api, run_tasks, {"name": "lc", "memory": 512, "vcpus": 1, "disks": [{"size": 1}, {"path": str(existing)}]})
    base = f"/api/v1/virtualmachines/{vm.pk}"
    assert vm_api.post(f"{base}/force-stop").json()["status"] == "stopped"
    assert hv.domains["lc"].state == "shutoff"
    assert vm_api.post(f"{base}/start").json()["status"] == "running"
    assert vm_api.post(f"{base}/reboot").status_code == 200
    assert vm_api.post(f"{base}/stop").status_code == 200
    detail = vm_api.get(base).json()
    assert detail["state"] == "shutoff" and detail["status"] == "stopped"
    assert [e["step"] for e in detail["events"]][-4:] == ["force-stop", "start", "reboot", "stop"]
    assert vm_api.delete(base).status_code == 204
    assert hv.domains == {} and list(hv.pool_dir.iterdir()) == [] and existing.exists()
    assert vm_api.get(base).status_code == 404


def test_delete_with_keep_disks_keeps_the_volumes(vm_api, hv, run_tasks):
    vm = create_vm(vm_api, run_tasks, {"name": "kd", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}?keep_disks=true").status_code == 204
    assert [p.name for p in hv.pool_dir.iterdir()] == ["kd-disk0.qcow2"]


def test_actions_on_a_failed_vm_are_409(vm_api, hv, run_tasks):
    hv.fail["define_domain"] = HypervisorError("boom")
    vm = create_vm(vm_api, run_tasks, {"name": "fv", "memory": 512, "vcpus": 1})
    response = vm_api.post(f"/api/v1/virtualmachines/{vm.pk}/start")
    assert response.status_code == 409
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}").status_code == 204  # a failed VM can be cleaned up


def test_vm_list_query_count_is_flat(vm_api, hv, run_tasks):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert vm_api.get("/api/v1/virtualmachines/").status_code == 200
        return len(captured.captured_queries)

    create_vm(vm_api, run_tasks, {"name": "q0", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    few = queries()
    for index in range(1, 8):
        create_vm(vm_api, run_tasks, {"name": f"q{index}", "memory": 512, "vcpus": 1, "disks": [{"size": 1}, {"size": 1}]})
    assert queries() == few
    assert len(vm_api.get("/api/v1/virtualmachines/").json()["virtualmachines"]) == 8


@pytest.mark.parametrize(("method", "path"), [("get", ""), ("post", "create-enhanced"), ("get", "1"), ("delete", "1"), ("post", "1/start")])
def test_permissions(anon_api, nobody_api, method, path):
    url = f"/api/v1/virtualmachines/{path}"
    assert getattr(anon_api, method)(url, {}, format="json").status_code == 401
    assert getattr(nobody_api, method)(url, {}, format="json").status_code == 403


def test_delete_while_a_worker_provisions_is_409_until_its_claim_is_stale(vm_api, hv, run_tasks, settings):
    from datetime import timedelta

    from django.utils import timezone

    vm = create_vm(vm_api, run_tasks, {"name": "busy", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    VirtualMachine.objects.filter(pk=vm.pk).update(status="provisioning", claimed_at=timezone.now())
    response = vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}")
    assert (response.status_code, response.json()["code"]) == (409, "vm_busy")
    dead_worker = timezone.now() - timedelta(seconds=settings.VAPOR.q_timeout + 60)
    VirtualMachine.objects.filter(pk=vm.pk).update(claimed_at=dead_worker)
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}").status_code == 204
    assert hv.domains == {} and list(hv.pool_dir.iterdir()) == []
