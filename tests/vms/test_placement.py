"""Placement over several hosts (issue 15, point 3), against three in-memory hosts (tests/fakes.FakeHosts).

- default: 8 GiB, 8 CPUs, bridge br0, pool default (the local host: VAPOR_LIBVIRT_URI)
- h2:     16 GiB, 8 CPUs, bridges br0 and br-internal, pools default and fast
- h3:     32 GiB, 8 CPUs, no bridge, pool default
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.fakes import FakeDomain, FakeHosts, FakeHypervisor
from tests.support.api import CREATE_URL, post_create
from tests.support.images import make_image
from vms.host_models import DEFAULT_HOST, Host, HostHealth
from vms.hypervisor import FirmwareSupport, HostResources
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db

GIB = 2**30
H2 = "qemu+tcp://10.99.0.2/system"
H3 = "qemu+tcp://10.99.0.3/system"


@dataclasses.dataclass
class Three:
    hosts: FakeHosts
    default: FakeHypervisor
    h2: FakeHypervisor
    h3: FakeHypervisor

    def fake(self, name: str) -> FakeHypervisor:
        return {"default": self.default, "h2": self.h2, "h3": self.h3}[name]

    def all(self) -> list[FakeHypervisor]:
        return [self.default, self.h2, self.h3]


def _size(gib: int) -> HostResources:
    return HostResources(gib * GIB, cpus=8, model="x86_64", hostname=f"fake-{gib}g")


@pytest.fixture
def three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Three:
    hosts = FakeHosts(pool_root=tmp_path / "hosts")
    default = hosts.add(django_settings.VAPOR.libvirt_uri, host=_size(8), bridges={"br0"})
    hosts.default = default
    h2 = hosts.add(H2, host=_size(16), bridges={"br0", "br-internal"})
    (tmp_path / "fast").mkdir()
    h2.pools["fast"] = tmp_path / "fast"
    h3 = hosts.add(H3, host=_size(32), bridges=set())
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", hosts.get)
    Host.objects.create(name="h2", uri=H2)
    Host.objects.create(name="h3", uri=H3)
    return Three(hosts, default, h2, h3)


def vm(name: str, memory: int = 1024, **more: Any) -> dict[str, Any]:
    return {"name": name, "memory": memory, "vcpus": 1, "disks": [{"size": 1}], **more}


def created(vm_api, run_tasks, payload: dict[str, Any]) -> dict[str, Any]:
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    return response.json()


def dry(vm_api, payload: dict[str, Any]) -> Any:
    return vm_api.post(CREATE_URL + "?dry_run=true", payload, format="json")


def nothing_left(three: Three) -> None:
    assert not VirtualMachine.objects.exists()
    for fake in three.all():
        assert fake.domains == {}
        assert all(not list(Path(p).iterdir()) for p in fake.pools.values())


def test_automatic_placement_picks_the_most_free_memory_and_provisions_there(vm_api, three, run_tasks):
    body = created(vm_api, run_tasks, vm("auto-1"))
    assert body["host"] == "h3"
    row = VirtualMachine.objects.get(name="auto-1")
    assert row.host.name == "h3" and row.status == "running", row.error
    assert set(three.h3.domains) == {"auto-1"} and three.default.domains == {} and three.h2.domains == {}
    assert row.disks.get().path.startswith(str(three.h3.pool_dir))
    listed = vm_api.get("/api/v1/virtualmachines/").json()["virtualmachines"]
    assert [(v["name"], v["host"]) for v in listed] == [("auto-1", "h3")]
    assert vm_api.get(f"/api/v1/virtualmachines/{row.pk}").json()["host"] == "h3"


def test_a_host_whose_memory_budget_is_filled_is_refused_with_the_figures_and_the_next_vm_lands_elsewhere(vm_api, three, run_tasks):
    assert created(vm_api, run_tasks, vm("big-1", 12288))["host"] == "h3"  # 32 GiB: 20 GiB left, h2 would keep 4
    assert created(vm_api, run_tasks, vm("big-2", 12288))["host"] == "h3"  # 8 GiB left there, h2 still 4
    response = dry(vm_api, vm("big-3", 12288))
    assert response.status_code == 200, response.json()
    placement = response.json()["placement"]
    assert placement["host"] == "h2"
    assert placement["refused"]["h3"] == ["memory: 24576 MB used by 2 VM(s) + 12288 MB asked > 32768 MB budget (32768 MB x 1)"]
    assert placement["refused"]["default"] == ["memory: 0 MB used by 0 VM(s) + 12288 MB asked > 8192 MB budget (8192 MB x 1)"]
    assert created(vm_api, run_tasks, vm("big-3", 12288))["host"] == "h2"
    assert set(three.h2.domains) == {"big-3"}


def test_a_stopped_vm_still_holds_its_memory_but_a_failed_one_does_not(vm_api, three, run_tasks):
    created(vm_api, run_tasks, vm("held", 30000, host="h3"))
    VirtualMachine.objects.filter(name="held").update(status="stopped")
    assert dry(vm_api, vm("next", 4096)).json()["placement"]["host"] == "h2"
    VirtualMachine.objects.filter(name="held").update(status="failed")
    assert dry(vm_api, vm("next", 4096)).json()["placement"]["host"] == "h3"


def test_the_vcpu_budget_is_the_host_cpus_times_its_ratio(vm_api, three, run_tasks):
    Host.objects.filter(name="h3").update(cpu_overcommit=0.5)  # 8 CPUs x 0.5: 4 vCPUs
    created(vm_api, run_tasks, {**vm("cpu-1"), "vcpus": 3})
    response = dry(vm_api, {**vm("cpu-2"), "vcpus": 2})
    assert response.json()["placement"]["host"] == "h2"
    assert response.json()["placement"]["refused"]["h3"] == ["vCPUs: 3 used by 1 VM(s) + 2 asked > 4 budget (8 CPUs x 0.5)"]


def test_a_host_without_the_bridge_asked_is_never_chosen(vm_api, three, run_tasks):
    payload = vm("bridged", networks=[{"type": "bridge", "source": "br-internal"}])
    response = dry(vm_api, payload)
    placement = response.json()["placement"]
    assert placement["host"] == "h2"
    assert placement["refused"] == {
        "default": ["networks.0.source: host bridge 'br-internal' does not exist"],
        "h3": ["networks.0.source: host bridge 'br-internal' does not exist"],
    }
    for index in range(3):  # h3 keeps the most memory each time, and is still never chosen
        assert created(vm_api, run_tasks, vm(f"bridged-{index}", networks=[{"type": "bridge", "source": "br0"}]))["host"] != "h3"


def test_the_nat_network_and_the_pool_asked_must_be_on_the_host(vm_api, three, run_tasks):
    three.h3.networks = {"other"}
    assert dry(vm_api, vm("nat")).json()["placement"]["refused"]["h3"] == ["networks.0.source: libvirt network 'default' does not exist"]
    body = dry(vm_api, vm("fast", storage_pool="fast")).json()
    assert body["placement"]["host"] == "h2"
    assert body["placement"]["refused"]["h3"] == ["storage_pool: storage pool 'fast' does not exist"]


def test_the_architecture_asked_must_be_offered(vm_api, three, monkeypatch):
    monkeypatch.setattr(
        three.h3, "capabilities", lambda: dataclasses.replace(FakeHypervisor.capabilities(three.h3), arches={"aarch64": ("qemu",)})
    )
    refused = dry(vm_api, vm("arch")).json()["placement"]["refused"]
    assert refused["h3"] == ["architecture: the host cannot run x86_64 guests (it offers aarch64)"]


def test_an_existing_disk_goes_where_its_file_is(vm_api, three, run_tasks):
    image = make_image(three.h2.pool_dir / "data.qcow2", "1G")
    payload = {"name": "with-disk", "memory": 1024, "vcpus": 1, "disks": [{"path": str(image)}]}
    body = dry(vm_api, payload).json()
    assert body["placement"]["host"] == "h2"
    assert body["placement"]["refused"]["h3"] == [f"disks.0.path: {image} is not on this host (no volume of its pools has that path)"]
    assert body["placement"]["refused"]["default"] == [f"disks.0.path: {image} is not on this host (no volume of its pools has that path)"]
    assert created(vm_api, run_tasks, payload)["host"] == "h2"


def test_disabled_maintenance_and_down_hosts_are_refused_with_their_reasons(vm_api, three):
    Host.objects.filter(name=DEFAULT_HOST).update(enabled=False)
    Host.objects.filter(name="h3").update(maintenance=True)
    response = dry(vm_api, vm("one-left"))
    assert response.json()["placement"] == {
        "host": "h2",
        "requested": False,
        "refused": {"default": ["disabled"], "h3": ["in maintenance"]},
    }
    Host.objects.filter(name="h2").update(health=HostHealth.DOWN, last_error="connection refused")
    response = dry(vm_api, vm("none-left"))
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "no_host"
    assert body["refused"] == {"default": ["disabled"], "h2": ["down: connection refused"], "h3": ["in maintenance"]}
    assert "h2: down: connection refused" in body["detail"]
    assert three.hosts.asked[H2] == 1  # asked for the first dry run only: a host recorded down is not asked


def test_a_host_that_does_not_answer_is_refused_with_its_error(vm_api, three, run_tasks):
    three.hosts.down(H3)
    body = created(vm_api, run_tasks, vm("around-dead"))
    assert body["host"] == "h2"
    refused = dry(vm_api, vm("again")).json()["placement"]["refused"]
    assert refused["h3"] == [f"unreachable: cannot connect to {H3}: Connection refused (host unavailable)"]


def test_a_host_that_hangs_is_refused_in_bounded_time(vm_api, three, settings, monkeypatch):
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, host_connect_timeout=0.1, qemu_user="")

    def slow() -> HostResources:
        time.sleep(3)
        return _size(32)

    monkeypatch.setattr(three.h3, "host_resources", slow)
    started = time.monotonic()
    response = dry(vm_api, vm("no-wait"))
    assert time.monotonic() - started < 2.5
    assert response.json()["placement"]["host"] == "h2"
    assert response.json()["placement"]["refused"]["h3"] == ["unreachable: no answer within 1.1 s"]


def test_no_host_fits_is_409_listing_each_host_and_leaves_nothing(vm_api, three, run_tasks):
    response = post_create(vm_api, run_tasks, vm("too-big", 40000))
    assert response.status_code == 409, response.json()
    body = response.json()
    assert body["code"] == "no_host"
    assert set(body["refused"]) == {"default", "h2", "h3"}
    assert body["refused"]["h3"] == ["memory: 0 MB used by 0 VM(s) + 40000 MB asked > 32768 MB budget (32768 MB x 1)"]
    nothing_left(three)


def test_an_explicit_host_is_used_even_when_another_has_more_room(vm_api, three, run_tasks):
    body = created(vm_api, run_tasks, vm("pinned", host="default"))
    assert body["host"] == "default"
    assert set(three.default.domains) == {"pinned"}
    placement = dry(vm_api, vm("pinned-2", host="h2")).json()["placement"]
    assert placement == {"host": "h2", "requested": True, "refused": {}}


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"enabled": False}, "disabled"), ({"maintenance": True}, "in maintenance"), ({"health": "down", "last_error": "gone"}, "down: gone")],
)
def test_an_explicit_host_that_takes_no_vms_is_409_with_the_reason_even_in_a_dry_run(vm_api, three, run_tasks, change, reason):
    Host.objects.filter(name="h3").update(**change)
    for response in (dry(vm_api, vm("refused", host="h3")), post_create(vm_api, run_tasks, vm("refused", host="h3"))):
        assert response.status_code == 409
        body = response.json()
        assert (body["code"], body["field"], body["refused"]) == ("host_unavailable", "host", {"h3": [reason]})
        assert body["detail"] == f"host h3 does not take new VMs: {reason}"
    nothing_left(three)


def test_an_explicit_host_that_is_full_is_409_with_the_figures(vm_api, three, run_tasks):
    created(vm_api, run_tasks, vm("fill", 6144, host="default"))
    response = post_create(vm_api, run_tasks, vm("over", 4096, host="default"))
    assert response.status_code == 409
    body = response.json()
    assert (body["code"], body["field"]) == ("host_full", "host")
    assert body["refused"] == {"default": ["memory: 6144 MB used by 1 VM(s) + 4096 MB asked > 8192 MB budget (8192 MB x 1)"]}
    assert not VirtualMachine.objects.filter(name="over").exists()


def test_an_explicit_host_missing_the_bridge_gets_validation_s_own_error(vm_api, three, run_tasks):
    response = dry(vm_api, vm("no-br", host="h3", networks=[{"type": "bridge", "source": "br0"}]))
    assert response.status_code == 404
    assert (response.json()["field"], response.json()["detail"]) == ("networks.0.source", "host bridge 'br0' does not exist")


def test_an_unknown_host_names_the_field(vm_api, three, run_tasks):
    response = post_create(vm_api, run_tasks, vm("nowhere", host="h9"))
    assert response.status_code == 404
    assert (response.json()["code"], response.json()["field"]) == ("host_not_found", "host")
    assert response.json()["detail"] == "host 'h9' does not exist"
    nothing_left(three)


def test_names_stay_unique_across_hosts(vm_api, three, run_tasks):
    created(vm_api, run_tasks, vm("same", host="h2"))
    response = post_create(vm_api, run_tasks, vm("same", host="h3"))
    assert response.status_code == 409
    assert (response.json()["code"], response.json()["field"]) == ("name_taken", "name")
    assert three.h3.domains == {}


def test_the_name_is_checked_free_on_the_chosen_host(vm_api, three, run_tasks):
    three.h3.domains["squatter"] = FakeDomain(xml="<domain type='kvm'><name>squatter</name></domain>")  # not Vapor's
    response = dry(vm_api, vm("squatter"))
    assert response.status_code == 409 and response.json()["code"] == "name_taken"


def test_the_dry_run_shows_the_placement_and_leaves_nothing(vm_api, three):
    response = dry(vm_api, vm("dry", networks=[{"type": "bridge", "source": "br0"}]))
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["placement"]["host"] == "h2" and body["placement"]["requested"] is False
    assert body["placement"]["refused"] == {"h3": ["networks.0.source: host bridge 'br0' does not exist"]}
    assert body["vm"]["host"] == "h2"
    assert str(three.h2.pool_dir) in body["domain_xml"]
    nothing_left(three)


def test_one_host_install_places_there_without_asking_twice(vm_api, hv, run_tasks):
    body = created(vm_api, run_tasks, vm("solo"))
    assert body["host"] == DEFAULT_HOST
    placement = dry(vm_api, vm("solo-2")).json()["placement"]
    assert placement == {"host": DEFAULT_HOST, "requested": False, "refused": {}}


# --- the admin's create page ------------------------------------------------------------------------


def _options(page: str, select_id: str) -> list[tuple[str, str]]:
    import re

    match = re.search(rf'<select[^>]*id="{select_id}"[^>]*>(.*?)</select>', page, re.S)
    assert match, f"no <select id={select_id}>"
    return re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', match.group(1))


def test_the_create_page_offers_automatic_placement_and_each_host_with_why_not(admin_client, three):
    from tests.vms.test_admin import ADD

    Host.objects.filter(name="h3").update(maintenance=True)
    page = admin_client.get(ADD).content.decode()
    assert _options(page, "id_host") == [("", "(automatic placement)"), ("default", "default"), ("h2", "h2"), ("h3", "h3 — in maintenance")]
    # Automatic: the lists of every host placement may use (h3 is in maintenance: its pool "default" only anyway).
    assert [value for value, _ in _options(page, "id_storage_pool")] == ["default", "fast"]
    assert [value for value, _ in _options(page, "id_networks-__prefix__-source")] == ["default"]
    one = admin_client.get(ADD + "?host=default").content.decode()
    assert [value for value, _ in _options(one, "id_storage_pool")] == ["default"]


def test_the_create_page_gives_its_script_a_hosts_lists_when_the_host_select_changes(admin_client, three):
    """`?host=NAME&lists=1`: the pools (with their room), networks and bridges of that host, which the page's
    script puts in place of the lists it shows (the browser test changes the select)."""
    from tests.vms.test_admin import ADD

    lists = admin_client.get(ADD + "?host=h2&lists=1").json()
    assert [name for name, _label in lists["pools"]] == ["default", "fast"] and set(lists["pool_room"]) == {"default", "fast"}
    assert [name for name, _label in lists["sources"]["bridge"]] == ["br-internal", "br0"] and lists["error"] == ""
    h3 = admin_client.get(ADD + "?host=h3&lists=1").json()
    assert [name for name, _label in h3["pools"]] == ["default"] and h3["sources"]["bridge"] == []
    three.hosts.down(H3)
    assert admin_client.get(ADD + "?host=h3&lists=1").json()["error"]  # an unreadable host says so; the page keeps its lists


def test_the_create_page_places_shows_the_placement_in_the_dry_run_and_the_host_s_refusal_on_its_field(admin_client, three, run_tasks):
    from tests.vms.test_admin import ADD, form_data

    page = admin_client.post(ADD, {**form_data(name="paged"), "_dryrun": "Dry run"}).content.decode()
    shown = 'id="preview-placement">Host: <b>h3</b>'
    assert shown in page
    Host.objects.filter(name="h2").update(enabled=False)
    page = admin_client.post(ADD, form_data(name="paged", host="h2")).content.decode()
    assert "host h2 does not take new VMs: disabled" in page
    assert not VirtualMachine.objects.exists()
    with run_tasks():
        response = admin_client.post(ADD, form_data(name="paged", host="default"))
    assert response.status_code == 302
    assert VirtualMachine.objects.get().host.name == "default" and set(three.default.domains) == {"paged"}


@pytest.mark.parametrize(
    ("asked", "firmware", "reason"),
    [
        ({"uefi": True}, FirmwareSupport(uefi=False, secure_boot=False, tpm=True), "uefi: the host offers no UEFI firmware"),
        (
            {"uefi": True, "secure_boot": True},
            FirmwareSupport(uefi=True, secure_boot=False, tpm=True),
            "secure_boot: the host offers no Secure Boot firmware",
        ),
        ({"tpm": True}, FirmwareSupport(uefi=True, secure_boot=True, tpm=False), "tpm: the host offers no TPM device"),
    ],
)
def test_uefi_secure_boot_and_tpm_only_where_the_host_offers_them(vm_api, three, asked, firmware, reason):
    three.h3.firmware = firmware
    body = dry(vm_api, vm("firmware", **asked)).json()
    assert body["placement"]["host"] == "h2"
    assert body["placement"]["refused"]["h3"] == [f"{reason} for x86_64/q35 (kvm)"]
    assert dry(vm_api, vm("plain")).json()["placement"]["host"] == "h3"  # not asked: not judged
    explicit = dry(vm_api, vm("firmware", host="h3", **asked))
    assert explicit.status_code == 400
    assert explicit.json()["code"] == "not_offered"


def test_a_host_that_does_not_say_what_firmware_it_has_is_not_refused(vm_api, three):
    three.h3.firmware = FirmwareSupport()
    assert dry(vm_api, vm("unsaid", uefi=True, tpm=True)).json()["placement"]["host"] == "h3"
