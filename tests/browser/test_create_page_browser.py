"""The "Create virtual machine" page at 1280x900 in a real browser, against the running portal and libvirtd:
no sideways scroll, a pool and a bridge picked from what the host has, the OS variant searched in
osinfo-db, the install ISO's boot type warned about next to the picker, the dry run's plan (and the
errors) at the top of the page and in view.

Screenshots go to var/artifacts/browser/create/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Portal, _manage
from tests.integration.conftest import unique, virsh
from tests.support.isos import make_iso
from tests.support.sshkeys import ed25519_key

pytestmark = [pytest.mark.libvirt, pytest.mark.browser]

ADD = "/admin/vms/virtualmachine/add/"


def no_sideways_scroll(page: Page) -> None:
    width, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page is {width} px wide in a {inner} px window"


def in_view(page: Page, selector: str) -> None:
    top, bottom, height = page.evaluate(
        "(s) => { const r = document.querySelector(s).getBoundingClientRect(); return [r.top, r.bottom, window.innerHeight]; }", selector
    )
    assert 0 <= top < height and bottom > 0, f"{selector} is at {top}..{bottom}, the window shows 0..{height}"


def log_in(page: Page, portal: Portal) -> None:
    page.goto(f"{portal.url}/admin/login/?next={ADD}")
    page.fill("#id_username", portal.username)
    page.fill("#id_password", portal.password)
    page.locator('input[type="submit"]').click()
    expect(page.locator("h1")).to_have_text("Create virtual machine")


def test_create_page_fits_picks_from_the_host_and_shows_the_plan_in_view(page: Page, portal: Portal, artifacts: Path) -> None:
    shots = artifacts / "create"
    shots.mkdir(exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    page.set_viewport_size({"width": 1280, "height": 900})
    vm_name = unique("create-page")
    iso_file = make_iso(portal.iso_dir / f"{vm_name}-bios.iso", label="BIOSONLY", boot="bios")
    iso_file.chmod(0o644)
    _manage(portal.env, portal.logs, "register_isos", str(iso_file))
    bridge = virsh("net-info", portal.network).stdout.split("Bridge:")[1].split()[0]  # virbr0: a Linux bridge on this host

    log_in(page, portal)
    # 1. The page fits 1280 px, with a second disk row too.
    no_sideways_scroll(page)
    page.screenshot(path=str(shots / "01-create-page.png"), full_page=True)
    page.get_by_role("link", name="Add a disk").click()
    expect(page.locator("#disk-rows .vapor-row")).to_have_count(2)
    no_sideways_scroll(page)
    for name in ("boot_order", "readonly", "DELETE"):  # once out of the box, now on screen width
        box = page.locator(f"#id_disks-1-{name}").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 1280, (name, box)

    # 2. The pool from the host's list, with its free space; the new disks measured against it.
    pool_option = page.locator(f'#id_storage_pool option[value="{portal.pool}"]')
    expect(pool_option).to_contain_text("free of")
    page.select_option("#id_storage_pool", portal.pool)
    page.fill("#id_name", vm_name)
    page.fill("#id_memory", "256")
    page.fill("#id_vcpus", "1")
    page.fill("#id_disks-0-size", "1")
    page.fill("#id_disks-1-size", "2")
    expect(page.locator("#pool-room")).to_contain_text(f"Pool {portal.pool}:")
    expect(page.locator("#pool-room")).to_contain_text("the new disks ask 3.0\xa0GB")

    # 3. A bridge: the NIC's source list follows its type (networks for NAT, bridges for a bridge).
    source = page.locator("#id_networks-0-source")
    expect(source.locator(f'option[value="{portal.network}"]')).to_have_count(1)
    page.select_option("#id_networks-0-type", "bridge")
    expect(source.locator(f'option[value="{portal.network}"]')).to_have_count(0)
    expect(source.locator(f'option[value="{bridge}"]')).to_contain_text(f"bridge of network {portal.network}")
    page.select_option("#id_networks-0-source", bridge)

    # 4. The OS variant, searched in osinfo-db: "ubu" finds ubuntu22.04.
    page.locator("#id_os_variant + .select2 .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill("ubu")
    ubuntu = page.locator(".select2-results__option", has_text="ubuntu22.04 — Ubuntu 22.04 LTS")
    expect(ubuntu).to_be_visible()
    page.screenshot(path=str(shots / "02-os-variant-search.png"))
    ubuntu.click()
    assert page.input_value("#id_os_variant") == "ubuntu22.04"

    # 5. The install ISO shows its boot type; BIOS-only with UEFI ticked is warned about next to the picker.
    page.check("#id_uefi")
    page.locator("#id_iso_path + .select2 .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill(vm_name)
    iso_option = page.locator(".select2-results__option", has_text=f"{vm_name}-bios.iso")
    expect(iso_option).to_contain_text("BIOS boot")
    iso_option.click()
    warning = page.locator("#iso-boot-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("boots with BIOS only, but UEFI is on")
    page.locator("#id_iso_path").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "03-iso-boot-warning.png"))
    page.uncheck("#id_uefi")
    expect(warning).to_be_hidden()
    page.check("#id_uefi")
    expect(warning).to_be_visible()
    # 5b. First boot: the cloud-init fields are folded away until asked for; filled in, they make a seed.
    expect(page.locator("#id_ci_hostname")).to_be_hidden()
    page.locator("#cloud-init-fields summary").click()
    expect(page.locator("#id_ci_enabled")).not_to_be_checked()
    page.fill("#id_ci_hostname", "web-browser")
    expect(page.locator("#id_ci_enabled")).to_be_checked()  # typing into a field asks for a seed, and the box says so
    page.fill("#id_ci_ssh_keys", ed25519_key("ops@desk"))
    page.fill("#id_ci_user_data", "#cloud-config\npackages: [nginx]\n")
    page.fill("#id_max_memory", "1024")
    no_sideways_scroll(page)
    page.locator("#cloud-init-fields").screenshot(path=str(shots / "04b-cloud-init.png"))
    page.screenshot(path=str(shots / "04-form-filled.png"), full_page=True)

    # 6. Dry run: the plan at the top, in view, with the server's own warning; nothing defined.
    page.locator('input[name="_dryrun"]').click()
    plan = page.locator("#dry-run")
    expect(plan).to_be_visible()
    in_view(page, "#dry-run")
    expect(plan).to_contain_text("nothing was created")
    expect(plan.locator(".vapor-plan-warnings")).to_contain_text("boots with BIOS only, but UEFI is on")
    xml = plan.locator("pre").text_content() or ""
    assert f"<name>{vm_name}</name>" in xml and f"bridge='{bridge}'" in xml.replace('"', "'"), xml
    assert "ubuntu22.04" in xml or "ubuntu.com/ubuntu/22.04" in xml, xml
    expect(plan).to_contain_text(f"create cloud-init seed {vm_name}-cidata.iso")
    no_sideways_scroll(page)
    page.screenshot(path=str(shots / "05-dry-run-plan.png"))
    assert virsh("dominfo", vm_name, check=False).returncode != 0, "a dry run defined the domain"
    # The bound form kept the choices.
    assert page.input_value("#id_storage_pool") == portal.pool and page.input_value("#id_networks-0-source") == bridge

    # 7. A refusal: the errors at the top too, in view, and on the row they concern.
    page.fill("#id_disks-1-size", "")
    page.fill("#id_disks-1-clone_from", "/etc/passwd")
    page.locator('input[name="_dryrun"]').click()
    expect(page.locator("#create-errors")).to_contain_text("Disk 1 · Clone from")
    in_view(page, "#create-errors")
    expect(page.locator("#dry-run")).to_have_count(0)
    page.screenshot(path=str(shots / "06-errors-at-the-top.png"))
