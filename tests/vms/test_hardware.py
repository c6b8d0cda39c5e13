"""Changing a VM's hardware against the in-memory hypervisor: maxima at creation, PATCH, NICs.

The real daemon (live changes seen in the guest) is tests/integration/test_hardware_real.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from projects.models import Project
from tests.support.api import create_vm, post_create
from vms.hypervisor.documents.hardware import read_hardware
from vms.models import NetworkInterface, VirtualMachine

pytestmark = pytest.mark.django_db

URL = "/api/v1/virtualmachines/{}"


def make(vm_api, run_tasks, **extra: Any) -> VirtualMachine:
    payload = {"name": "hw-vm", "memory": 1024, "vcpus": 1, "max_memory": 2048, "max_vcpus": 4, "disks": [{"size": 1}], **extra}
    return create_vm(vm_api, run_tasks, payload)


def patch(client, vm: VirtualMachine, body: dict[str, Any]) -> Any:
    return client.patch(URL.format(vm.pk), body, format="json")


def stop(hv, vm: VirtualMachine) -> None:
    hv.domains[vm.name].state = "shutoff"
    VirtualMachine.objects.filter(pk=vm.pk).update(status="stopped")
    vm.refresh_from_db()


# --- maxima at creation ------------------------------------------------------------------


def test_maxima_at_creation_become_the_domains_memory_and_vcpu_with_current_values(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    hw = read_hardware(hv.domains["hw-vm"].xml)
    assert (hw.memory_mib, hw.max_memory_mib, hw.vcpus, hw.max_vcpus) == (1024, 2048, 1, 4)
    body = vm_api.get(URL.format(vm.pk)).json()
    assert (body["memory"], body["max_memory"], body["vcpus"], body["max_vcpus"]) == (1024, 2048, 1, 4)


def test_maxima_default_to_memory_and_vcpus(vm_api, hv, run_tasks):
    vm = create_vm(vm_api, run_tasks, {"name": "plain", "memory": 512, "vcpus": 2})
    hw = read_hardware(hv.domains["plain"].xml)
    assert (hw.memory_mib, hw.max_memory_mib, hw.vcpus, hw.max_vcpus) == (512, 512, 2, 2)
    assert 'current="' not in hv.domains["plain"].xml
    assert vm_api.get(URL.format(vm.pk)).json()["max_memory"] == 512


@pytest.mark.parametrize(("field", "value"), [("max_memory", 512), ("max_vcpus", 0)])
def test_a_maximum_below_the_value_is_refused_at_creation(vm_api, hv, run_tasks, field: str, value: int):
    response = post_create(vm_api, run_tasks, {"name": "low", "memory": 1024, "vcpus": 1, field: value})
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == field
    assert not VirtualMachine.objects.exists() and hv.domains == {}


# --- PATCH on a running VM -----------------------------------------------------------------


def test_memory_and_vcpus_change_live_and_persistent_within_the_maxima(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    response = patch(vm_api, vm, {"memory": 2048, "vcpus": 3})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["applied"] == {"live": ["memory", "vcpus"], "persistent": ["memory", "vcpus"]}
    assert (body["memory"], body["vcpus"], body["max_memory"], body["max_vcpus"]) == (2048, 3, 2048, 4)
    assert body["warnings"] == []
    hw = read_hardware(hv.domains["hw-vm"].xml)
    assert (hw.memory_mib, hw.vcpus, hw.max_memory_mib, hw.max_vcpus) == (2048, 3, 2048, 4)
    event = vm.events.filter(step="change hardware", status="done").get()
    assert event.message == "memory 1024 -> 2048; vcpus 1 -> 3 (live and persistent)"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"memory": 4096}, "above_maximum", "memory"),
        ({"vcpus": 5}, "above_maximum", "vcpus"),
        ({"max_memory": 4096}, "vm_running", "max_memory"),
        ({"max_vcpus": 8}, "vm_running", "max_vcpus"),
        ({"memory": 1536, "max_memory": 1536}, "vm_running", "max_memory"),
    ],
)
def test_a_change_the_running_state_forbids_is_a_409_and_changes_nothing(vm_api, hv, run_tasks, body, code: str, field: str):
    vm = make(vm_api, run_tasks)
    before = hv.domains["hw-vm"].xml
    response = patch(vm_api, vm, body)
    assert response.status_code == 409, response.json()
    assert (response.json()["code"], response.json()["field"]) == (code, field)
    assert hv.domains["hw-vm"].xml == before
    vm.refresh_from_db()
    assert (vm.memory_mb, vm.vcpus, vm.max_memory_mb, vm.max_vcpus) == (1024, 1, 2048, 4)
    assert not vm.events.filter(step="change hardware").exists()


def test_an_unchanged_maximum_may_be_repeated_while_running(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    response = patch(vm_api, vm, {"memory": 1536, "max_memory": 2048})
    assert response.status_code == 200, response.json()
    assert response.json()["applied"]["live"] == ["memory"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cpus": 2}, "cpus"),
        ({"memory": 32}, "memory"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory": "lots"}, "memory"),
        ({"boot_order": ["floppy"]}, "boot_order.0"),
        ({"boot_order": ["hd", "vda"]}, "boot_order.1"),
        ({"boot_order": []}, "boot_order"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(vm_api, hv, run_tasks, body, field: str):
    vm = make(vm_api, run_tasks)
    before = hv.domains["hw-vm"].xml
    response = patch(vm_api, vm, body)
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == field
    assert hv.domains["hw-vm"].xml == before


def test_boot_order_is_persistent_with_a_warning_on_a_running_vm(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    mac = vm.nics.get().mac
    response = patch(vm_api, vm, {"boot_order": ["network", "hd"]})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["applied"] == {"live": [], "persistent": ["boot_order"]}
    assert body["warnings"] == ["boot_order takes effect at the next boot"]
    assert read_hardware(hv.domains["hw-vm"].xml).boot == (mac, "vda")
    assert body["networks"][0]["boot_order"] == 1 and body["disks"][0]["boot_order"] == 2


def test_autostart_is_set_on_the_domain(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    response = patch(vm_api, vm, {"autostart": True})
    assert response.status_code == 200, response.json()
    assert response.json()["autostart"] is True and hv.domains["hw-vm"].autostart is True
    assert response.json()["applied"]["persistent"] == ["autostart"]


def test_the_quota_counts_added_memory_and_vcpus(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    Project.objects.filter(pk=vm.project.pk).update(max_vcpus=2)
    before = hv.domains["hw-vm"].xml
    response = patch(vm_api, vm, {"vcpus": 3})
    assert response.status_code == 409, response.json()
    assert response.json()["code"] == "quota_exceeded"
    assert hv.domains["hw-vm"].xml == before
    assert patch(vm_api, vm, {"vcpus": 2}).status_code == 200


def test_a_libvirt_failure_part_way_undoes_the_steps_done(vm_api, hv, run_tasks):
    from vaporsite.errors import HypervisorError

    vm = make(vm_api, run_tasks)
    before = hv.domains["hw-vm"].xml
    hv.fail["set_vcpus"] = HypervisorError("the guest did not take the CPU")
    response = patch(vm_api, vm, {"memory": 2048, "vcpus": 2})
    assert response.status_code == 500, response.json()
    assert read_hardware(hv.domains["hw-vm"].xml) == read_hardware(before)
    vm.refresh_from_db()
    assert (vm.memory_mb, vm.vcpus) == (1024, 1)
    assert vm.events.filter(step="change hardware", status="failed").exists()


# --- PATCH on a stopped VM ---------------------------------------------------------------------


def test_a_stopped_vm_takes_new_maxima_and_raises_one_to_match(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    stop(hv, vm)
    response = patch(vm_api, vm, {"memory": 3072, "max_vcpus": 6, "vcpus": 5})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["applied"]["live"] == []
    assert sorted(body["applied"]["persistent"]) == ["max_memory", "max_vcpus", "memory", "vcpus"]
    assert body["warnings"] == ["max_memory raised to 3072 to match memory"]
    hw = read_hardware(hv.domains["hw-vm"].xml)
    assert (hw.memory_mib, hw.max_memory_mib, hw.vcpus, hw.max_vcpus) == (3072, 3072, 5, 6)


def test_a_stopped_vm_lowers_its_maximum_below_the_old_memory(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks, memory=2048)
    stop(hv, vm)
    response = patch(vm_api, vm, {"memory": 512, "max_memory": 1024})
    assert response.status_code == 200, response.json()
    hw = read_hardware(hv.domains["hw-vm"].xml)
    assert (hw.memory_mib, hw.max_memory_mib) == (512, 1024)


def test_a_maximum_below_the_value_is_a_400_on_a_stopped_vm(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    stop(hv, vm)
    response = patch(vm_api, vm, {"memory": 2048, "max_memory": 1024})
    assert response.status_code == 400 and response.json()["field"] == "max_memory"


def test_viewers_and_strangers_cannot_patch(vm_api, viewer_api, nobody_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    assert patch(viewer_api, vm, {"memory": 2048}).status_code in (403, 404)
    assert patch(nobody_api, vm, {"memory": 2048}).status_code in (403, 404)
    vm.refresh_from_db()
    assert vm.memory_mb == 1024


# --- NICs --------------------------------------------------------------------------------------


def nics_url(vm: VirtualMachine) -> str:
    return URL.format(vm.pk) + "/nics"


def test_a_nic_is_listed_added_live_and_removed(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    assert [n["mac"] for n in vm_api.get(nics_url(vm)).json()["nics"]] == [vm.nics.get().mac]
    response = vm_api.post(nics_url(vm), {"type": "bridge", "source": "br0", "mac": "52:54:00:AA:BB:01"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["nic"]["mac"] == "52:54:00:aa:bb:01" and body["nic"]["order"] == 1
    assert body["applied"] == {"live": ["networks"], "persistent": ["networks"]}
    assert len(body["networks"]) == 2
    assert "52:54:00:aa:bb:01" in read_hardware(hv.domains["hw-vm"].xml).macs
    response = vm_api.delete(nics_url(vm) + "/52:54:00:aa:bb:01")
    assert response.status_code == 200, response.json()
    assert response.json()["applied"] == {"live": ["networks"], "persistent": ["networks"]}
    assert "52:54:00:aa:bb:01" not in read_hardware(hv.domains["hw-vm"].xml).macs
    assert not NetworkInterface.objects.filter(mac="52:54:00:aa:bb:01").exists()
    assert [e.step for e in vm.events.filter(step__endswith="NIC")] == ["add NIC", "remove NIC"]


def test_a_nic_on_a_stopped_vm_is_persistent_only_with_a_new_mac(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    stop(hv, vm)
    response = vm_api.post(nics_url(vm), {"model": "rtl8139"}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["applied"] == {"live": [], "persistent": ["networks"]}
    assert response.json()["nic"]["mac"].startswith("52:54:00:")


@pytest.mark.parametrize(
    ("body", "status", "field", "code"),
    [
        ({"mac": "52:54:00:zz:00:01"}, 400, "mac", None),
        ({"mac": "53:54:00:00:00:01"}, 400, "mac", None),
        ({"source": "nowhere"}, 404, "source", None),
        ({"type": "bridge", "source": "br-missing"}, 404, "source", None),
        ({"model": "rtl8139"}, 409, "model", "not_hotpluggable"),
        ({"colour": "red"}, 400, "colour", None),
    ],
)
def test_a_refused_nic_leaves_nothing(vm_api, hv, run_tasks, body, status: int, field: str, code: str | None):
    vm = make(vm_api, run_tasks)
    before = hv.domains["hw-vm"].xml
    response = vm_api.post(nics_url(vm), body, format="json")
    assert response.status_code == status, response.json()
    assert response.json()["field"] == field
    if code:
        assert response.json()["code"] == code
    assert hv.domains["hw-vm"].xml == before and vm.nics.count() == 1


def test_a_mac_in_use_is_a_409(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    taken = vm.nics.get().mac
    before = hv.domains["hw-vm"].xml
    response = vm_api.post(nics_url(vm), {"mac": taken.upper()}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "mac_in_use"
    assert hv.domains["hw-vm"].xml == before


def test_removing_an_unknown_nic_is_a_404(vm_api, hv, run_tasks):
    vm = make(vm_api, run_tasks)
    response = vm_api.delete(nics_url(vm) + "/52:54:00:00:00:99")
    assert response.status_code == 404 and response.json()["field"] == "mac"


def test_a_failed_attach_leaves_no_row(vm_api, hv, run_tasks):
    from vaporsite.errors import HypervisorError

    vm = make(vm_api, run_tasks)
    hv.fail["attach_nic"] = HypervisorError("no free PCIe slot")
    response = vm_api.post(nics_url(vm), {}, format="json")
    assert response.status_code == 500
    assert vm.nics.count() == 1


# --- templates -----------------------------------------------------------------------------------


def test_a_template_carries_maxima_that_a_request_may_override(vm_api, hv, run_tasks):
    response = vm_api.post("/api/v1/virtualmachines/templates", {"name": "big", "memory": 512, "vcpus": 1, "max_memory": 1024,
                                                                "max_vcpus": 3}, format="json")  # fmt: skip
    assert response.status_code == 201, response.json()
    assert (response.json()["max_memory"], response.json()["max_vcpus"]) == (1024, 3)
    vm = create_vm(vm_api, run_tasks, {"name": "from-big", "template": "big"})
    assert (vm.memory_maximum, vm.vcpus_maximum) == (1024, 3)
    hw = read_hardware(hv.domains["from-big"].xml)
    assert (hw.memory_mib, hw.max_memory_mib, hw.vcpus, hw.max_vcpus) == (512, 1024, 1, 3)
    vm = create_vm(vm_api, run_tasks, {"name": "from-big-2", "template": "big", "max_vcpus": 2})
    assert vm.vcpus_maximum == 2 and vm.memory_maximum == 1024
    bad = vm_api.post("/api/v1/virtualmachines/templates", {"name": "bad", "memory": 512, "vcpus": 2, "max_vcpus": 1}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "max_vcpus"


def test_a_definition_with_maxima_reads_current_and_maximum_for_adoption():
    import dataclasses

    from tests.vms.test_domain_xml import example_1
    from vms.hypervisor.documents.domain import domain_xml, parse_definition

    spec = dataclasses.replace(example_1(), memory_mib=1024, max_memory_mib=4096, vcpus=2, max_vcpus=6)
    definition = parse_definition(domain_xml(spec))
    assert (definition.memory_mib, definition.max_memory_mib, definition.vcpus, definition.max_vcpus) == (1024, 4096, 2, 6)
    plain = parse_definition(domain_xml(example_1()))
    assert (plain.memory_mib, plain.max_memory_mib, plain.vcpus, plain.max_vcpus) == (2048, 2048, 2, 2)


def test_a_request_above_its_templates_maximum_drops_that_maximum(vm_api, hv, run_tasks):
    response = vm_api.post("/api/v1/virtualmachines/templates", {"name": "small", "memory": 512, "vcpus": 1, "max_memory": 768},
                           format="json")  # fmt: skip
    assert response.status_code == 201, response.json()
    vm = create_vm(vm_api, run_tasks, {"name": "bigger", "template": "small", "memory": 1024})
    assert (vm.memory_mb, vm.memory_maximum) == (1024, 1024)
