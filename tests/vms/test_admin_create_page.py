"""The "Create virtual machine" page (issue 13, point 3), against the in-memory hypervisor: pools,
networks and bridges offered from the host (read once per page, a text field when it cannot be
read), the OS variant search, the ISO's boot type and its warning, the pool's free space, the
dry-run plan and the errors at the top. The browser's side: tests/browser/test_create_page_browser.py."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from lxml import etree

from tests.support.factories import UserFactory
from tests.support.isos import make_iso, make_osinfo_db, register_ready
from tests.support.projects import join
from tests.vms.test_admin import ADD, CHANGELIST, add, form_data
from vaporsite.errors import HypervisorError
from vms.models import VirtualMachine
from vms.services.requests import NicRequest
from vms.services.templates import TemplateData, template_create

pytestmark = pytest.mark.django_db
PICKER = CHANGELIST + "iso-picker/"
GIB = 1024**3


def options(page: str, select_id: str) -> list[str]:
    """The option values of the <select id=...> in `page`."""
    match = re.search(rf'<select[^>]*id="{select_id}"[^>]*>(.*?)</select>', page, re.S)
    assert match, f"no <select id={select_id}>"
    return re.findall(r'<option value="([^"]*)"', match.group(1))


# --- pools, networks and bridges from the host ----------------------------------------------------------


def test_pools_networks_and_bridges_come_from_the_host_read_once_per_page(admin_client, hv):
    hv.pools["fast"] = hv.pool_dir
    hv.networks.add("isolated")
    hv.pool_capacity, hv.pool_available = 100 * GIB, 40 * GIB
    nics = [{"type": "nat", "source": "default", "model": "virtio"}, {"type": "bridge", "source": "br0", "model": "virtio"},
            {"type": "bridge", "source": "br-internal", "model": "virtio"}]  # fmt: skip
    page = admin_client.post(ADD, form_data(name="bad name", nics=nics)).content.decode()  # refused: the bound page
    assert options(page, "id_storage_pool") == ["default", "fast"]
    assert "default — 40.0\xa0GB free of 100.0\xa0GB · dir" in page
    # A NIC's source lists what its type takes: networks for NAT, bridges for a bridge.
    assert options(page, "id_networks-0-source") == ["default", "isolated"]
    assert options(page, "id_networks-1-source") == options(page, "id_networks-2-source") == ["br-internal", "br0"]
    assert options(page, "id_networks-__prefix__-source") == ["default", "isolated"]  # the row "Add" copies
    # Three NIC rows, one read of each list.
    assert (hv.calls["list_pools"], hv.calls["list_networks"], hv.calls["list_bridges"]) == (1, 1, 1)


def test_a_network_s_bridge_says_whose_it_is(admin_client, hv, monkeypatch):
    from vms.hypervisor import NetworkInfo

    monkeypatch.setattr(hv, "list_networks", lambda: [NetworkInfo("default", True, True, "nat", "virbr0", "192.168.122.0/24")])
    hv.bridges = {"virbr0", "br0"}
    page = admin_client.get(ADD).content.decode()
    assert "default — nat 192.168.122.0/24" in page
    data = json.loads(page.split('id="vapor-create-data" type="application/json">')[1].split("</script>")[0])
    assert data["sources"]["bridge"] == [["br0", "br0"], ["virbr0", "virbr0 — bridge of network default"]]


def test_a_value_the_host_lacks_stays_shown_and_the_service_names_it(admin_client, hv, run_tasks):
    response = add(admin_client, run_tasks, storage_pool="gone", nics=[{"type": "bridge", "source": "br9", "model": "virtio"}])
    page = response.content.decode()
    assert '<option value="gone" selected>gone (not on this host)</option>' in page
    assert "storage pool &#x27;gone&#x27; does not exist" in page
    assert not VirtualMachine.objects.exists()


def test_when_the_host_cannot_be_read_the_page_offers_text_fields_and_says_why(admin_client, hv, run_tasks):
    hv.fail["list_pools"] = HypervisorError("Failed to connect socket to '/run/libvirt/libvirt-sock'")
    page = admin_client.get(ADD).content.decode()
    assert 'id="host-unreadable"' in page and "Failed to connect socket" in page
    assert re.search(r'<input type="text" name="storage_pool" value="default"', page)
    assert re.search(r'<input type="text" name="networks-0-source" value="default"', page)
    # Typing the names still creates the VM (the service checks them).
    response = add(admin_client, run_tasks, nics=[{"type": "bridge", "source": "br0", "model": "virtio"}])
    assert response.status_code == 302, response.content.decode()[-2000:]


# --- the OS variant search ------------------------------------------------------------------------------


@pytest.fixture
def osinfo_db(tmp_path: Path, settings) -> Path:
    db = make_osinfo_db(tmp_path / "osinfo")
    # One OS with its real English name and a translation, as the files have it.
    root = etree.Element("libosinfo", version="0.0.1")
    os_element = etree.SubElement(root, "os", id="http://microsoft.com/win/2k25")
    etree.SubElement(os_element, "short-id").text = "win2k25"
    etree.SubElement(os_element, "name", {"{http://www.w3.org/XML/1998/namespace}lang": "de"}).text = "Windows Server 2025 (de)"
    etree.SubElement(os_element, "name").text = "Microsoft Windows Server 2025"
    etree.SubElement(os_element, "family").text = "winnt"
    (db / "os" / "microsoft.com").mkdir(exist_ok=True)
    (db / "os" / "microsoft.com" / "win-2k25.xml").write_bytes(etree.tostring(root))
    settings.VAPOR = dataclasses.replace(settings.VAPOR, osinfo_dir=db)
    return db


def search(admin_client, term: str, **extra: str) -> dict:
    response = admin_client.get(PICKER, {"field_name": "os_variant", "term": term, **extra})
    assert response.status_code == 200, response.content
    return response.json()


def test_typing_part_of_an_os_finds_its_osinfo_ids(admin_client, osinfo_db):
    ids = [r["id"] for r in search(admin_client, "ubu")["results"]]
    assert ids == ["ubuntu24.04", "ubuntu22.10", "ubuntu22.04", "ubuntujammy"]  # newest first, the alias last
    assert [r["id"] for r in search(admin_client, "UBUNTU 22")["results"]] == ["ubuntu22.10", "ubuntu22.04", "ubuntujammy"]
    found = search(admin_client, "server 2025")["results"]  # by its English name
    assert found == [{"id": "win2k25", "text": "win2k25 — Microsoft Windows Server 2025"}]
    assert search(admin_client, "no-such-os")["results"] == []


def test_the_search_pages_like_select2_expects(admin_client, osinfo_db, monkeypatch):
    monkeypatch.setattr("vms.admin.create.PICKER_LIMIT", 10)  # the miniature catalogue has 19 ids
    first, second = search(admin_client, ""), search(admin_client, "", page="2")
    assert len(first["results"]) == 10 and first["pagination"]["more"] is True
    assert second["pagination"]["more"] is False and len(second["results"]) == 9
    assert not {r["id"] for r in first["results"]} & {r["id"] for r in second["results"]}


def test_the_search_needs_the_right_to_create_a_vm(client, osinfo_db, db):
    from django.contrib.auth.models import Permission

    user = UserFactory.create(is_staff=True, permissions=Permission.objects.filter(codename__startswith="view_"))
    join(user, "viewer")
    client.force_login(user)
    assert client.get(PICKER, {"field_name": "os_variant", "term": "ubu"}).status_code == 403


def test_an_unknown_variant_gets_the_service_s_error_on_the_field(admin_client, hv, run_tasks, osinfo_db):
    page = add(admin_client, run_tasks, os_variant="ubuntu22").content.decode()
    assert "field-os_variant errors" in page
    assert "&#x27;ubuntu22&#x27; is not an osinfo-db short id; did you mean ubuntu22.04, ubuntu22.10?" in page
    assert '<option value="ubuntu22" selected>ubuntu22 (not in osinfo-db)</option>' in page
    assert not VirtualMachine.objects.exists()
    response = add(admin_client, run_tasks, os_variant="ubuntu22.04")
    assert response.status_code == 302 and VirtualMachine.objects.get().os_variant == "ubuntu22.04"


# --- the ISO's boot type --------------------------------------------------------------------------------


@pytest.fixture
def isos(iso_dirs) -> dict[str, str]:
    """A ready ISO of each boot type, by boot type."""
    found = {}
    for boot in ("bios", "uefi", "hybrid", "none"):
        iso = register_ready(make_iso(iso_dirs.search[0] / f"{boot}.iso", boot=boot))
        assert iso.boot_type == boot
        found[boot] = iso.pk
    return found


def test_the_iso_picker_shows_the_boot_type(admin_client, isos):
    body = admin_client.get(PICKER, {"term": "iso"}).json()
    shown = {r["text"].split(" — ")[0]: (r["boot_type"], r["text"]) for r in body["results"]}
    assert shown["bios.iso"][0] == "bios" and "· BIOS boot ·" in shown["bios.iso"][1]
    assert "· UEFI boot ·" in shown["uefi.iso"][1] and "· BIOS + UEFI boot ·" in shown["hybrid.iso"][1]
    assert "· not bootable ·" in shown["none.iso"][1]


@pytest.mark.parametrize(
    ("boot", "uefi", "warning"),
    [
        ("bios", "on", "boots with BIOS only, but UEFI is on"),
        ("uefi", "", "boots with UEFI only, but UEFI is off"),
        ("none", "", "is not bootable"),
        ("none", "on", "is not bootable"),
        ("bios", "", None),
        ("uefi", "on", None),
        ("hybrid", "on", None),
        ("hybrid", "", None),
    ],
)
def test_a_dry_run_warns_when_the_install_iso_will_not_boot_and_create_still_works(admin_client, hv, run_tasks, isos, boot, uefi, warning):
    response = add(admin_client, run_tasks, iso_path=isos[boot], uefi=uefi, _dryrun="Dry run")
    page = response.content.decode()
    assert "Dry run: nothing was created" in page, page[-3000:]
    panel = page[page.index('id="dry-run"') : page.index('id="vm-create-form"')]
    boot_warning = page[page.index('id="iso-boot-warning"') :].split("</p>")[0]
    if warning is None:
        assert "vapor-plan-warnings" not in panel and " hidden>" in boot_warning
    else:
        assert f"Install ISO {boot}.iso {warning}" in panel
        assert f"This ISO {warning}" in boot_warning and " hidden>" not in boot_warning  # next to the picker, without JavaScript too
    # A warning is not a refusal: the explicit create goes ahead.
    response = add(admin_client, run_tasks, iso_path=isos[boot], uefi=uefi)
    assert response.status_code == 302, response.content.decode()[-2000:]


def test_the_driver_iso_is_never_judged(admin_client, hv, run_tasks, isos):
    page = add(admin_client, run_tasks, iso_path=isos["hybrid"], secondary_iso=isos["none"], _dryrun="Dry run").content.decode()
    assert "Dry run: nothing was created" in page and "vapor-plan-warnings" not in page


def test_the_api_s_dry_run_carries_the_warnings(vm_api, hv, run_tasks, isos):
    from tests.support.api import post_create

    body = {"name": "api-dry", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "iso_path": isos["bios"], "uefi": True}
    response = post_create(vm_api, run_tasks, body, url="/api/v1/virtualmachines/create-enhanced?dry_run=true")
    assert response.status_code == 200, response.json()
    assert response.json()["warnings"] == ["install ISO bios.iso boots with BIOS only, but UEFI is on: untick UEFI or pick a UEFI ISO"]
    body["uefi"] = False
    response = post_create(vm_api, run_tasks, body, url="/api/v1/virtualmachines/create-enhanced?dry_run=true")
    assert response.json()["warnings"] == []


# --- the pool's free space --------------------------------------------------------------------------------


@pytest.fixture
def small_pool(hv, settings):
    """100 GiB, 40 GiB free; overcommit 1.5: room for 90 GiB of new (thin) disks, 40 of them without a warning."""
    hv.pool_capacity, hv.pool_available = 100 * GIB, 40 * GIB
    settings.VAPOR = dataclasses.replace(settings.VAPOR, pool_overcommit=1.5)
    return hv


def test_new_disks_past_the_free_space_are_warned_about(admin_client, run_tasks, small_pool):
    disks = [{"size": "30", "format": "qcow2", "bus": "virtio"}, {"size": "10", "format": "raw", "bus": "virtio"}]
    page = add(admin_client, run_tasks, disks=disks, _dryrun="Dry run").content.decode()
    assert "Dry run: nothing was created" in page and "vapor-plan-warnings" not in page  # 40 GB: exactly what is free
    disks[1]["size"] = "11"
    page = add(admin_client, run_tasks, disks=disks, _dryrun="Dry run").content.decode()
    assert "The new disks (41 GB) are larger than pool default&#x27;s free space (40 GB)" in page


def test_existing_disks_do_not_count_against_the_free_space(admin_client, run_tasks, small_pool, disk_root):
    from tests.support.images import make_image

    existing = make_image(disk_root / "data.qcow2", "50G")
    disks = [{"size": "40", "format": "qcow2", "bus": "virtio"}, {"path": str(existing), "format": "qcow2", "bus": "virtio"}]
    page = add(admin_client, run_tasks, disks=disks, _dryrun="Dry run").content.decode()
    assert "Dry run: nothing was created" in page and "vapor-plan-warnings" not in page


def test_past_the_pool_s_room_is_refused_on_the_disk_size_with_its_code(admin_client, vm_api, run_tasks, small_pool):
    from tests.support.api import post_create

    response = post_create(vm_api, run_tasks, {"name": "big", "memory": 512, "vcpus": 1, "disks": [{"size": 50}, {"size": 41}]})
    body = response.json()
    assert (response.status_code, body["field"], body["code"]) == (400, "disks.1.size", "pool_too_small"), body
    disks = [{"size": "50", "format": "qcow2", "bus": "virtio"}, {"size": "41", "format": "qcow2", "bus": "virtio"}]
    page = add(admin_client, run_tasks, disks=disks).content.decode()
    assert page.index('id="create-errors"') < page.index("Disk 1 · Size (GB): the new disks need 91 GB") < page.index('id="vm-create-form"')
    assert not VirtualMachine.objects.exists()


# --- where the plan and the errors are, and the rows' layout ----------------------------------------------


def test_the_plan_and_the_errors_come_before_the_form(admin_client, hv, run_tasks):
    page = add(admin_client, run_tasks, _dryrun="Dry run").content.decode()
    assert page.index('id="dry-run"') < page.index('id="vm-create-form"')
    assert "<details><summary>Domain XML (password masked)</summary>" in page
    page = add(admin_client, run_tasks, name="no spaces", secure_boot="on").content.decode()
    top = page[page.index('id="create-errors"') : page.index('id="vm-create-form"')]
    assert "Please correct the error below:" in top and "Name: must be 1-64 letters" in top  # the service stops at the first
    assert 'id="dry-run"' not in page


def test_a_disk_row_is_two_lines_and_a_nic_row_one(admin_client, hv):
    page = admin_client.get(ADD).content.decode()
    row = page[page.index('id="disks-0-row"') : page.index('id="disk-empty"')]
    first, second = row.split('class="vapor-line"')[1:3]
    assert all(f'name="disks-0-{name}"' in first for name in ("size", "format", "bus", "boot_order", "DELETE"))
    assert all(f'name="disks-0-{name}"' in second for name in ("path", "readonly", "clone_from", "linked", "source_format"))
    assert "<table" not in row
    nic = page[page.index('id="networks-0-row"') : page.index('id="nic-empty"')]
    assert nic.count('class="vapor-line"') == 1


def test_a_template_s_nics_are_offered_from_the_host_too(admin_client, hv):
    template_create(data=TemplateData(name="bridged", networks=(NicRequest(type="bridge", source="br-internal"),)))
    page = admin_client.get(ADD + "?template=bridged").content.decode()
    assert options(page, "id_networks-0-source") == ["br-internal", "br0"]
    assert '<option value="br-internal" selected>' in page


def test_the_lists_hold_what_the_user_s_projects_open(client, hv, run_tasks):
    from projects.models import Project

    hv.pools["fast"] = hv.pool_dir
    Project.objects.create(name="lab", allowed_pools="fast", allowed_bridges="br0")
    user = UserFactory.create(is_staff=True)
    join(user, "operator", "lab")
    client.force_login(user)
    page = client.get(ADD).content.decode()
    assert options(page, "id_storage_pool") == ["fast"]
    assert options(page, "id_networks-0-source") == ["default"]  # no list of networks: every network
    data = json.loads(page.split('id="vapor-create-data" type="application/json">')[1].split("</script>")[0])
    assert [name for name, _ in data["sources"]["bridge"]] == ["br0"] and list(data["pools"]) == ["fast"]
    # A value held back is kept, saying why; the service refuses it on the field.
    page = client.post(ADD, form_data(storage_pool="default", project="lab")).content.decode()
    assert '<option value="default" selected>default (not open to your projects)</option>' in page
    assert "pool &#x27;default&#x27; is not open to project lab" in page
    assert not VirtualMachine.objects.exists()
