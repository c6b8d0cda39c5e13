"""The admin in a real browser: log in, register an ISO, create a VM with two
disks and a NIC through the "Create virtual machine" page, watch it run,
force it off and delete it (after the list's confirmation naming its volumes), against the running portal and the real libvirtd.

A screenshot after each step goes to var/artifacts/browser/NN-step.png.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Error, Locator, Page, expect

from tests.browser.conftest import Portal
from tests.integration.conftest import unique, virsh
from tests.support.images import qemu_img_info
from tests.support.isos import make_iso

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

GIB = 1024**3
PROVISION_TIMEOUT = 120.0


class Shots:
    def __init__(self, page: Page, directory: Path) -> None:
        self.page, self.directory, self.count = page, directory, 0

    def take(self, step: str, *, full_page: bool = True) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{step}.png"
        if full_page:
            self.page.evaluate("() => window.scrollTo(0, 0)")  # the sticky sidebar then sits at the top of the picture
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


def wait_for_text(
    page: Page, locator: Locator, *, done: Callable[[str], bool], failed: Callable[[str], bool], timeout: float, what: str
) -> str:
    """Read `locator` until `done(text)`, while the page reloads itself (meta refresh); no reload of ours."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = " ".join(locator.inner_text(timeout=5_000).split())
        except Error:  # the page was between two loads
            text = ""
        if text and done(text):
            return text
        if text and failed(text):
            raise AssertionError(f"{what}: the page shows {text!r}")
        page.wait_for_timeout(500)
    raise AssertionError(f"{what}: still {text!r} after {timeout:.0f} s (the page should refresh itself until then)")


def run_list_action(page: Page, portal: Portal, vm_pk: str, action_label: str) -> None:
    page.goto(f"{portal.url}/admin/vms/virtualmachine/")
    page.locator(f'input.action-select[value="{vm_pk}"]').check()
    page.select_option('select[name="action"]', label=action_label)
    page.locator('button[name="index"]').click()
    page.wait_for_load_state()


def test_admin_registers_an_iso_creates_runs_stops_and_deletes_a_vm(page: Page, portal: Portal, artifacts: Path, capsys) -> None:
    vm_name = unique("browser-vm")
    shots = Shots(page, artifacts)
    iso_file = make_iso(portal.iso_dir / f"{vm_name}-install.iso", label="BROWSERTEST", boot="bios")
    iso_file.chmod(0o644)
    try:
        # 1. Log in.
        page.goto(f"{portal.url}/admin/login/")
        expect(page.locator("#id_username")).to_be_visible()
        # The admin's stylesheet came with the page (the server serves it): the login box is styled.
        assert page.evaluate("() => getComputedStyle(document.querySelector('#header')).display") == "flex"
        page.fill("#id_username", portal.username)
        page.fill("#id_password", portal.password)
        page.locator('input[type="submit"]').click()
        expect(page).to_have_url(f"{portal.url}/admin/")
        expect(page.locator("#user-tools strong")).to_have_text(portal.username)
        shots.take("logged-in")

        # 2. Register the ISO by its path; the list refreshes itself until hashing is done.
        page.goto(f"{portal.url}/admin/isos/isoimage/add/")
        page.fill("#id_path", str(iso_file))
        page.fill("#id_name", f"{vm_name} install")
        shots.take("iso-add-form")
        page.locator('input[name="_save"]').click()
        expect(page.locator(".messagelist .success")).to_be_visible()
        assert "/admin/isos/isoimage/" in page.url
        shots.take("iso-registered")
        iso_row = page.locator("#result_list tbody tr", has_text=f"{vm_name} install")
        wait_for_text(
            page,
            iso_row.locator("td.field-status_column"),
            done=lambda text: text == "Ready",
            failed=lambda text: text.startswith(("Failed", "Cancelled")),
            timeout=60,
            what="the ISO's status in the ISO list",
        )
        page.goto(f"{portal.url}/admin/isos/isoimage/")
        expect(iso_row.locator("td.field-status_column")).to_have_text("Ready")
        shots.take("iso-ready")

        # 3. "Create virtual machine": name, memory, vCPUs, two disks, the NIC, the ISO; dry run, then create.
        page.goto(f"{portal.url}/admin/vms/virtualmachine/add/")
        expect(page.locator("h1")).to_have_text("Create virtual machine")
        page.fill("#id_name", vm_name)
        page.fill("#id_memory", "256")
        page.fill("#id_vcpus", "1")
        page.select_option("#id_storage_pool", portal.pool)  # the host's pools, with their free space
        page.fill("#id_disks-0-size", "1")
        page.select_option("#id_disks-0-bus", "virtio")
        rows_before = int(page.input_value("#id_disks-TOTAL_FORMS"))
        page.get_by_role("link", name="Add a disk").click()
        assert int(page.input_value("#id_disks-TOTAL_FORMS")) == rows_before + 1
        added = rows_before  # the new row's index
        page.fill(f"#id_disks-{added}-size", "2")
        page.select_option(f"#id_disks-{added}-bus", "scsi")
        assert page.locator("#nic-rows .vapor-row").count() == 1
        page.select_option("#id_networks-0-type", "nat")
        page.select_option("#id_networks-0-source", portal.network)  # the host's networks for a NAT NIC
        # The install ISO: select2's search box, fed by the ISO picker view.
        page.locator("#id_iso_path + .select2 .select2-selection").click()
        search = page.locator(".select2-container--open .select2-search__field")
        search.fill("install")
        option = page.locator(".select2-results__option", has_text=f"{vm_name} install")
        expect(option).to_contain_text("Ready")
        expect(page.locator(".select2-results__option.loading-results")).to_have_count(0)  # the search has answered
        shots.take("iso-picker-search", full_page=False)
        option.click()
        expect(page.locator("#id_iso_path + .select2 .select2-selection__rendered")).to_contain_text(f"{vm_name} install")
        iso_pk = page.input_value("#id_iso_path")
        assert iso_pk, "the picker chose no ISO"
        shots.take("create-form-filled")

        page.locator('input[name="_dryrun"]').click()
        plan = page.locator("#dry-run")
        expect(plan).to_be_visible()
        expect(plan).to_contain_text("nothing was created")
        xml = plan.locator("pre").text_content() or ""  # in a closed <details>
        assert f"<name>{vm_name}</name>" in xml
        assert xml.count("<disk type=") == 3, xml  # two volumes and the CD-ROM
        assert "bus='scsi'" in xml or 'bus="scsi"' in xml, xml
        assert str(iso_file) in xml, xml
        shots.take("dry-run-plan")
        assert virsh("dominfo", vm_name, check=False).returncode != 0, "a dry run defined the domain"
        # The bound form kept every value, the ISO included.
        assert page.input_value("#id_iso_path") == iso_pk
        assert page.input_value(f"#id_disks-{added}-bus") == "scsi"

        page.locator('input[name="_create"]').click()
        expect(page).to_have_url(re.compile(r"/admin/vms/virtualmachine/\d+/change/$"))
        vm_pk = page.url.rstrip("/").split("/")[-2]
        expect(page.locator(".messagelist .success")).to_contain_text(f"VM {vm_name} accepted")
        shots.take("vm-accepted")

        # 4. The VM page follows provisioning until the VM runs.
        wait_for_text(
            page,
            page.locator(".field-status .readonly"),
            done=lambda text: text == "Running",
            failed=lambda text: text in ("Failed", "Missing on host"),
            timeout=PROVISION_TIMEOUT,
            what=f"VM {vm_name}'s status on its page",
        )
        expect(page.locator("#vapor-progress")).to_have_count(0)
        assert virsh("domstate", vm_name).stdout.strip() == "running"
        expect(page.locator(".field-memory_mb .readonly")).to_have_text("256")
        expect(page.locator(".field-vcpus .readonly")).to_have_text("1")
        disk_rows = page.locator("#disks-group tbody tr.has_original")
        expect(disk_rows).to_have_count(2)
        expect(page.locator("#disks-group")).to_contain_text("scsi")
        shots.take("vm-running")
        sizes = {v.name: qemu_img_info(v, "-U")["virtual-size"] for v in portal.pool_dir.iterdir()}
        assert sorted(sizes.values()) == [1 * GIB, 2 * GIB], sizes

        # 5. Force it off from the VM list.
        run_list_action(page, portal, vm_pk, "Force off the selected VMs")
        expect(page.locator(".messagelist .success")).to_contain_text(f"Force off: {vm_name}")
        vm_row = page.locator("#result_list tbody tr", has_text=vm_name)
        expect(vm_row.locator("td.field-status_badge")).to_have_text("Stopped")
        assert virsh("domstate", vm_name).stdout.strip() == "shut off"
        shots.take("vm-forced-off")

        # 6. Delete it from the list: the domain and its volumes are gone.
        # The action asks first, naming the domain and each volume it erases.
        run_list_action(page, portal, vm_pk, "Delete the selected VMs")
        expect(page.locator("h1")).to_have_text("Delete the selected virtual machines?")
        erased = page.locator(f"#vapor-delete-plan-{vm_pk} .vapor-when-deleting .vapor-erased")
        for volume in portal.pool_dir.iterdir():
            expect(erased).to_contain_text(str(volume))
        shots.take("vm-delete-confirmation")
        page.locator('input[type="submit"][value="Delete 1 virtual machine"]').click()
        expect(page.locator(".messagelist .success")).to_contain_text(f"Delete: {vm_name}")
        expect(page.locator("#result_list tbody tr", has_text=vm_name)).to_have_count(0)
        gone = virsh("dominfo", vm_name, check=False)
        assert gone.returncode != 0 and "failed to get domain" in gone.stderr, gone
        assert sorted(p.name for p in portal.pool_dir.iterdir()) == []
        shots.take("vm-deleted")

        # 7. The audit trail names who did each step, from where, through the admin; the project shows its use.
        page.goto(f"{portal.url}/admin/projects/auditentry/?action=vm.force-stop")
        audit_row = page.locator("#result_list tbody tr", has_text=f"VM {vm_name}")
        expect(audit_row).to_have_count(1)
        expect(audit_row.locator("td.field-username")).to_have_text(portal.username)
        expect(audit_row.locator("td.field-via")).to_have_text("admin")
        expect(audit_row.locator("td.field-source_address")).to_have_text("127.0.0.1")
        shots.take("audit-trail-filtered")
        page.goto(f"{portal.url}/admin/projects/auditentry/")
        for action in ("vm.create", "vm.force-stop", "vm.delete"):
            expect(page.locator("#result_list tbody tr", has_text=f"VM {vm_name}").filter(has_text=action)).to_have_count(1)
        shots.take("audit-trail")
        page.goto(f"{portal.url}/admin/projects/project/")
        expect(page.locator("#result_list tbody tr", has_text="default")).to_have_count(1)
        shots.take("projects")
    finally:
        virsh("destroy", vm_name, check=False)
        virsh("undefine", vm_name, "--nvram", "--tpm", "--managed-save", check=False)
        with capsys.disabled():
            print(f"\nbrowser screenshots: {artifacts}")
