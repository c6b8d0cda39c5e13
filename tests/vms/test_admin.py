"""VMs and templates in the admin: the create page, the detail page, actions, templates."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from tests.support.factories import UserFactory, VmTemplateFactory
from tests.support.images import make_image
from tests.support.isos import make_iso
from tests.support.projects import join
from vms.models import VirtualMachine, VmTemplate
from vms.services.requests import DiskRequest, NicRequest
from vms.services.templates import TemplateData, stored_os_type, template_create

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/vms/virtualmachine/"
ADD = CHANGELIST + "add/"


def rows(prefix: str, items: list[dict], initial: int | None = None) -> dict:
    data = {f"{prefix}-TOTAL_FORMS": str(len(items)), f"{prefix}-INITIAL_FORMS": str(len(items) if initial is None else initial),
            f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"}  # fmt: skip
    for index, item in enumerate(items):
        data.update({f"{prefix}-{index}-{key}": value for key, value in item.items()})
    return data


def form_data(name: str = "web", disks: list[dict] | None = None, nics: list[dict] | None = None, **fields) -> dict:
    disks = [{"size": "5", "format": "qcow2", "bus": "virtio"}] if disks is None else disks
    nics = [{"type": "nat", "source": "default", "model": "virtio"}] if nics is None else nics
    data = {"name": name, "memory": "1024", "vcpus": "1", "architecture": "x86_64", "graphics_type": "vnc", "graphics_port": "-1",
            "storage_pool": "default", **rows("disks", disks), **rows("networks", nics), "_create": "Create"}  # fmt: skip
    data.update(fields)
    return data


def add(admin_client, run_tasks, **kwargs):
    with run_tasks():
        return admin_client.post(ADD, form_data(**kwargs))


def test_create_page_offers_everything_create_enhanced_does(admin_client, hv):
    page = admin_client.get(ADD).content.decode()
    for name in ("name", "memory", "vcpus", "os_type", "os_variant", "architecture", "iso_path", "secondary_iso", "uefi", "secure_boot",
                 "tpm", "graphics_type", "graphics_port", "graphics_password", "storage_pool", "autostart", "template"):  # fmt: skip
        assert f'name="{name}"' in page, name
    for name in ("size", "path", "clone_from", "linked", "source_format", "format", "bus", "boot_order", "readonly"):
        assert f'name="disks-0-{name}"' in page, name
    for name in ("type", "source", "model"):
        assert f'name="networks-0-{name}"' in page, name
    assert 'value="Dry run"' in page and "Add a disk" in page and "Add a network interface" in page
    assert "/admin/vms/virtualmachine/iso-picker/" in page  # the ISO search box


def test_create_with_two_disks_and_two_nics(admin_client, hv, run_tasks, disk_root):
    base = make_image(disk_root / "base.qcow2", "1G")
    disks = [{"size": "5", "format": "qcow2", "bus": "virtio"},
             {"clone_from": str(base), "linked": "on", "format": "qcow2", "bus": "scsi"}]  # fmt: skip
    nics = [{"type": "nat", "source": "default", "model": "virtio"}, {"type": "bridge", "source": "br0", "model": "e1000e"}]
    response = add(admin_client, run_tasks, disks=disks, nics=nics, graphics_password="pw123", uefi="on")
    assert response.status_code == 302, response.content.decode()[-3000:]
    vm = VirtualMachine.objects.get()
    assert response["Location"] == f"{CHANGELIST}{vm.pk}/change/"
    assert (vm.status, vm.uefi, vm.graphics_password_set) == ("running", True, True)
    assert [(d.source, d.bus, d.linked) for d in vm.disks.all()] == [("new", "virtio", False), ("clone", "scsi", True)]
    assert [(n.type, n.source, n.model) for n in vm.nics.all()] == [("nat", "default", "virtio"), ("bridge", "br0", "e1000e")]


def test_blank_and_deleted_rows_are_ignored(admin_client, hv, run_tasks):
    disks = [{"size": "5", "format": "qcow2", "bus": "virtio"}, {"size": "7", "format": "qcow2", "bus": "virtio", "DELETE": "on"},
             {"format": "qcow2", "bus": "virtio"}]  # fmt: skip
    data = form_data(disks=disks)
    data["disks-INITIAL_FORMS"] = "1"  # rows 1 and 2 were added in the page
    with run_tasks():
        response = admin_client.post(ADD, data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert [d.size_gb for d in VirtualMachine.objects.get().disks.all()] == [5]


@pytest.mark.parametrize(
    ("kwargs", "row_id", "message"),
    [
        ({"nics": [{"type": "nat", "source": "default", "model": "virtio"}, {"type": "nat", "source": "nope", "model": "virtio"}]},
         "networks-1-row", "libvirt network &#x27;nope&#x27; does not exist"),
        ({"disks": [{"size": "5", "format": "qcow2", "bus": "virtio"}, {"path": "/etc/passwd", "format": "qcow2", "bus": "virtio"}]},
         "disks-1-row", "/etc/passwd"),
        ({"disks": [{"format": "qcow2", "bus": "virtio"}]}, "disks-0-row", "give size"),
    ],
)  # fmt: skip
def test_service_errors_appear_on_the_row_they_concern(admin_client, hv, run_tasks, kwargs, row_id, message):
    response = add(admin_client, run_tasks, **kwargs)
    assert response.status_code == 200
    page = response.content.decode()
    assert message in page
    # The error is printed just before the row it concerns.
    assert page.index(message) < page.index(f'id="{row_id}"')
    assert page.index('class="vapor-row-errors"') < page.index(f'id="{row_id}"')
    assert not VirtualMachine.objects.exists() and hv.domains == {}


def test_field_errors_appear_on_the_field(admin_client, hv, run_tasks):
    response = add(admin_client, run_tasks, secure_boot="on", graphics_password="far-too-long")
    page = response.content.decode()
    assert "Secure Boot needs UEFI" in page
    assert not VirtualMachine.objects.exists()
    response = add(admin_client, run_tasks, graphics_password="far-too-long")
    page = response.content.decode()
    assert "field-graphics_password errors" in page and "1-8 characters" in page
    assert "far-too-long" not in page  # a password is never echoed back


def test_dry_run_shows_plan_and_xml_and_creates_nothing(admin_client, hv, run_tasks):
    response = add(admin_client, run_tasks, _dryrun="Dry run", graphics_password="pw123")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Dry run: nothing was created" in page
    assert "create volume web-disk0.qcow2" in page and "define domain" in page
    assert "&lt;domain" in page and "pw123" not in page
    assert not VirtualMachine.objects.exists() and hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_template_picker_prefills_the_form(admin_client, hv, run_tasks, disk_root, iso_dirs):
    base = make_image(disk_root / "ubuntu-base.qcow2", "2G")
    iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "ubuntu.iso")), meta=IsoMetadata(), digests=None)
    IsoImage.objects.filter(pk=iso.pk).update(status="ready")
    data = TemplateData(name="ubuntu-22.04", memory=3072, vcpus=3, os_variant="ubuntu22.04", uefi=True, iso=iso.pk,
                        disks=(DiskRequest(clone_from=str(base), size=30), DiskRequest(size=100, bus="scsi")),
                        networks=(NicRequest(type="bridge", source="br0"),))  # fmt: skip
    template_create(data=data)
    page = admin_client.get(ADD + "?template=ubuntu-22.04").content.decode()
    assert 'name="memory" value="3072"' in page and '<option value="ubuntu22.04" selected>ubuntu22.04 — Ubuntu 22.04 LTS' in page
    assert f'value="{base}"' in page and 'name="disks-1-size" value="100"' in page and '<option value="br0" selected>br0</option>' in page
    assert f'<option value="{iso.pk}" selected>ubuntu.iso' in page
    # Submitting the pre-filled form as it is makes the VM the template describes, and records the template.
    post = form_data(name="from-template", memory="3072", vcpus="3", os_variant="ubuntu22.04", uefi="on", iso_path=iso.pk,
                     template="ubuntu-22.04", prefilled_from="ubuntu-22.04",
                     disks=[{"clone_from": str(base), "size": "30", "format": "qcow2", "bus": "virtio"},
                            {"size": "100", "format": "qcow2", "bus": "scsi"}],
                     nics=[{"type": "bridge", "source": "br0", "model": "virtio"}])  # fmt: skip
    with run_tasks():
        response = admin_client.post(ADD, post)
    assert response.status_code == 302, response.content.decode()[-3000:]
    vm = VirtualMachine.objects.get()
    assert vm.template is not None and vm.template.name == "ubuntu-22.04"
    assert [(d.source, d.size_gb) for d in vm.disks.all()] == [("clone", 30), ("new", 100)]
    assert hv.clone_capacities == {"from-template-disk0.qcow2": 30 * 1024**3}


def test_picking_a_template_without_javascript_fills_the_form_first(admin_client, hv, run_tasks):
    VmTemplateFactory.create(name="small", memory_mb=512)
    response = admin_client.post(ADD, form_data(template="small"))
    assert response.status_code == 302 and response["Location"].endswith("?template=small")
    assert not VirtualMachine.objects.exists()


def test_iso_picker_searches_and_shows_status_and_os(admin_client, hv, iso_dirs):
    ready = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "ubuntu-22.04.iso")), meta=IsoMetadata(os_variant="ubuntu22.04"),
                              digests=None)  # fmt: skip
    IsoImage.objects.filter(pk=ready.pk).update(status="ready", size=4_700_000_000)
    iso_register_path(path=str(make_iso(iso_dirs.search[0] / "ubuntu-24.04.iso")), meta=IsoMetadata(), digests=None)  # hashing
    make_iso(iso_dirs.search[0] / "debian.iso")
    body = admin_client.get(CHANGELIST + "iso-picker/", {"term": "ubuntu"}).json()
    assert [(r["text"].split(" — ")[0], r["disabled"]) for r in body["results"]] == [
        ("ubuntu-22.04.iso", False),
        ("ubuntu-24.04.iso", True),
    ]
    assert "Ready · ubuntu22.04 · not bootable · 4.4\xa0GB" in body["results"][0]["text"]  # size as the ISO list shows it
    assert "Hashing" in body["results"][1]["text"]
    assert body["results"][0]["boot_type"] == "none"  # the page warns next to the picker


# --- the VM page and the list -------------------------------------------------------------


def test_detail_shows_inlines_event_log_and_masked_xml(admin_client, hv, run_tasks):
    add(admin_client, run_tasks, graphics_password="pw123")
    vm = VirtualMachine.objects.get()
    page = admin_client.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    assert "web-disk0.qcow2" in page and "event log" in page.lower() and "define domain" in page
    assert "&lt;domain" in page and "********" in page and "pw123" not in page
    assert 'name="_save"' not in page  # nothing is edited in place


def test_actions_and_delete(admin_client, hv, run_tasks):
    add(admin_client, run_tasks)
    vm = VirtualMachine.objects.get()
    admin_client.post(CHANGELIST, {"action": "action_force_stop", "_selected_action": [vm.pk]})
    assert hv.domains["web"].state == "shutoff"
    admin_client.post(CHANGELIST, {"action": "action_start", "_selected_action": [vm.pk]})
    assert hv.domains["web"].state == "running"
    confirm = admin_client.post(CHANGELIST, {"action": "action_delete", "_selected_action": [vm.pk]})
    assert confirm.status_code == 200 and "web-disk0.qcow2" in confirm.content.decode() and VirtualMachine.objects.exists()
    admin_client.post(CHANGELIST, {"action": "action_delete", "_selected_action": [vm.pk], "post": "yes"})
    assert not VirtualMachine.objects.exists() and hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_refresh_action_reads_the_host_once(admin_client, hv, run_tasks):
    for name in "abc":
        add(admin_client, run_tasks, name=name)
    hv.domains["b"].state = "shutoff"
    del hv.domains["c"]
    hv.calls.clear()
    ids = list(VirtualMachine.objects.values_list("pk", flat=True))
    admin_client.post(CHANGELIST, {"action": "refresh_states", "_selected_action": ids})
    assert dict(VirtualMachine.objects.values_list("name", "status")) == {"a": "running", "b": "stopped", "c": "missing"}
    assert hv.calls["list_domains"] == 1 and hv.calls["domain_state"] == 0


def test_changelist_never_calls_libvirt_and_query_count_is_flat(admin_client, hv, run_tasks):
    def count() -> int:
        hv.calls.clear()
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(CHANGELIST).status_code == 200
        assert sum(hv.calls.values()) == 0
        return len(captured.captured_queries)

    add(admin_client, run_tasks, name="a")
    few = count()
    for name in "bcdef":
        add(admin_client, run_tasks, name=name)
    assert count() == few


# --- templates -----------------------------------------------------------------------------

TEMPLATE_ADD = "/admin/vms/vmtemplate/add/"


def template_form(**fields) -> dict:
    data = {"name": "tpl", "description": "", "memory_mb": "2048", "vcpus": "2", "architecture": "x86_64", "storage_pool": "",
            "os_type": "", "os_variant": "", "iso": "", "graphics_type": "vnc",
            **rows("disks", [{"order": "0", "size_gb": "20", "format": "qcow2", "bus": "virtio"}], initial=0),
            **rows("nics", [{"order": "0", "type": "nat", "source": "default", "model": "virtio"}], initial=0)}  # fmt: skip
    data.update(fields)
    return data


def test_template_admin_creates_with_rows(admin_client, hv):
    response = admin_client.post(TEMPLATE_ADD, template_form(uefi="on", os_variant="ubuntu22.04"))
    assert response.status_code == 302, response.content.decode()[-3000:]
    template = VmTemplate.objects.get()
    assert (template.uefi, template.os_variant) == (True, "ubuntu22.04")
    assert [d.size_gb for d in template.disks.all()] == [20] and [n.source for n in template.nics.all()] == ["default"]
    assert "tpl" in admin_client.get("/admin/vms/vmtemplate/").content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"os_variant": "nosuchos1"}, "nosuchos1"),
        ({"secure_boot": "on"}, "Secure Boot needs UEFI"),
        ({"disks-0-size_gb": "", "disks-0-clone_from": "/etc/passwd"}, "/etc/passwd"),
        ({"disks-0-linked": "on"}, "linked only applies to clone_from"),
    ],
)
def test_template_admin_checks_the_api_rules(admin_client, hv, disk_root, fields, message):
    response = admin_client.post(TEMPLATE_ADD, template_form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not VmTemplate.objects.exists()


def _change_form(template: VmTemplate, **fields) -> dict:
    """The change page's POST for `template` as stored, with `fields` changed."""
    disks = [{"id": str(d.pk), "template": str(template.pk), "order": str(d.order), "size_gb": str(d.size_gb or ""),
              "format": d.format, "bus": d.bus} for d in template.disks.all()]  # fmt: skip
    nics = [{"id": str(n.pk), "template": str(template.pk), "order": str(n.order), "type": n.type, "source": n.source, "model": n.model}
            for n in template.nics.all()]  # fmt: skip
    return {**template_form(name=template.name), **rows("disks", disks), **rows("nics", nics), **fields}


def test_template_saved_in_the_admin_stores_the_os_type_the_api_stores(admin_client, vm_api, hv):
    """An OS variant without an OS type: the type derived from the variant is stored, whichever way the template came."""
    response = admin_client.post(TEMPLATE_ADD, template_form(os_variant="ubuntu22.04"))
    assert response.status_code == 302, response.content.decode()[-3000:]
    api = vm_api.post("/api/v1/virtualmachines/templates", {"name": "tpl-api", "os_variant": "ubuntu22.04"}, format="json")
    assert api.status_code == 201, api.json()
    template = VmTemplate.objects.get(name="tpl")
    assert stored_os_type(TemplateData(name="tpl", os_variant="ubuntu22.04")) == "linux"
    assert template.os_type == VmTemplate.objects.get(name="tpl-api").os_type == "linux"

    response = admin_client.post(f"/admin/vms/vmtemplate/{template.pk}/change/", _change_form(template, os_variant="win11"))
    assert response.status_code == 302, response.content.decode()[-3000:]
    template.refresh_from_db()
    assert (template.os_variant, template.os_type) == ("win11", "windows")
    assert [d.size_gb for d in template.disks.all()] == [20] and [n.source for n in template.nics.all()] == ["default"]


def test_template_admin_shows_the_service_errors_on_the_field_or_row(admin_client, hv):
    template_create(data=TemplateData(name="taken"))

    def errors(**fields) -> tuple[dict, list[dict], list[dict]]:
        response = admin_client.post(TEMPLATE_ADD, template_form(**fields))
        assert response.status_code == 200
        disks, nics = (inline.formset for inline in response.context["inline_admin_formsets"])
        return response.context["adminform"].form.errors, [f.errors for f in disks.forms], [f.errors for f in nics.forms]

    assert "already exists" in errors(name="taken")[0]["name"][0]
    assert "at least 64 MB" in errors(memory_mb="32")[0]["memory_mb"][0]
    assert "linked only applies to clone_from" in errors(**{"disks-0-linked": "on"})[1][0]["linked"][0]
    assert "must be greater than 0" in errors(**{"disks-0-size_gb": "0"})[1][0]["size_gb"][0]
    assert VmTemplate.objects.count() == 1


def test_rows_a_user_may_not_see_are_kept_when_the_template_changes(client, hv):
    from django.contrib.auth.models import Permission, User

    template = template_create(data=TemplateData(name="tpl", disks=(DiskRequest(size=20),), networks=(NicRequest(),)))
    user = User.objects.create_user("templates-only", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_vmtemplate", "change_vmtemplate"]))
    join(user, "operator")  # the template is in the default project
    client.force_login(user)
    page = client.get(f"/admin/vms/vmtemplate/{template.pk}/change/").content.decode()
    assert 'name="disks-TOTAL_FORMS"' not in page  # no inline rows on the page
    fields = {k: v for k, v in template_form(name="tpl", memory_mb="4096").items() if not k.startswith(("disks-", "nics-"))}
    response = client.post(f"/admin/vms/vmtemplate/{template.pk}/change/", fields)
    assert response.status_code == 302, response.content.decode()[-3000:]
    template.refresh_from_db()
    assert template.memory_mb == 4096
    assert [d.size_gb for d in template.disks.all()] == [20] and [n.source for n in template.nics.all()] == ["default"]


def test_template_admin_refuses_to_delete_a_template_in_use(admin_client, hv, run_tasks):
    template = VmTemplateFactory.create(name="tpl")
    with run_tasks():
        admin_client.post(ADD, form_data(template="tpl", prefilled_from="tpl"))
    assert VirtualMachine.objects.get().template == template
    response = admin_client.post(f"/admin/vms/vmtemplate/{template.pk}/delete/", {"post": "yes"}, follow=True)
    assert "is used by 1 VM(s): web" in response.content.decode()
    assert VmTemplate.objects.exists()


# --- a read-only operator ---------------------------------------------------------------------


@pytest.fixture
def viewer_client(client, db):
    from django.contrib.auth.models import Permission

    user = UserFactory.create(is_staff=True, permissions=Permission.objects.filter(codename__startswith="view_"))
    join(user, "viewer")
    client.force_login(user)
    return client


def test_read_only_operator_sees_everything_and_changes_nothing(viewer_client, admin_client, hv, run_tasks):
    add(admin_client, run_tasks, graphics_password="pw123")
    VmTemplateFactory.create(name="tpl")
    vm = VirtualMachine.objects.get()
    template = VmTemplate.objects.get()
    pages = [CHANGELIST, f"{CHANGELIST}{vm.pk}/change/", "/admin/vms/vmtemplate/", f"/admin/vms/vmtemplate/{template.pk}/change/",
             "/admin/", "/admin/isos/isoimage/"]  # fmt: skip
    for url in pages:
        response = viewer_client.get(url)
        assert response.status_code == 200, url
        # Everyone keeps their own SSH keys (day two: cloud_init): that add link is not a change to anything shared.
        page = response.content.decode().replace('href="/admin/vms/sshpublickey/add/" class="addlink"', "")
        assert "pw123" not in page
        assert 'class="addlink"' not in page and 'name="_save"' not in page and 'value="action_' not in page, url
        assert 'value="refresh_states"' not in page and "deletelink" not in page, url
    assert viewer_client.get(ADD).status_code == 403
    assert viewer_client.post(ADD, form_data(name="sneaky")).status_code == 403
    for action in ("action_start", "action_force_stop", "action_delete", "refresh_states"):
        viewer_client.post(CHANGELIST, {"action": action, "_selected_action": [vm.pk]})
    assert viewer_client.post(f"{CHANGELIST}{vm.pk}/delete/", {"post": "yes"}).status_code == 403
    assert viewer_client.post(f"/admin/vms/vmtemplate/{template.pk}/change/", {"name": "renamed"}).status_code == 403
    assert viewer_client.post(f"/admin/vms/vmtemplate/{template.pk}/delete/", {"post": "yes"}).status_code == 403
    assert VirtualMachine.objects.filter(name="sneaky").count() == 0
    assert VirtualMachine.objects.get().status == "running" and hv.domains["web"].state == "running"
    assert VmTemplate.objects.get().name == "tpl"


def test_delete_page_of_a_vm_being_provisioned_says_why_instead_of_failing(admin_client, hv, run_tasks):
    from django.utils import timezone

    add(admin_client, run_tasks)
    vm = VirtualMachine.objects.get()
    VirtualMachine.objects.filter(pk=vm.pk).update(status="provisioning", claimed_at=timezone.now())
    response = admin_client.post(f"{CHANGELIST}{vm.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "Not deleted: VM web is being provisioned" in response.content.decode()
    assert VirtualMachine.objects.filter(pk=vm.pk).exists() and "web" in hv.domains


def test_state_is_stored_after_provisioning_and_actions(admin_client, hv, run_tasks):
    add(admin_client, run_tasks)
    vm = VirtualMachine.objects.get()
    assert (vm.state, vm.state_checked_at is not None) == ("running", True)
    admin_client.post(CHANGELIST, {"action": "action_force_stop", "_selected_action": [vm.pk]})
    vm.refresh_from_db()
    assert (vm.status, vm.state) == ("stopped", "shutoff")


def test_vm_page_shows_the_console_port_libvirt_assigned(admin_client, hv, run_tasks):
    add(admin_client, run_tasks, graphics_password="pw123")
    vm = VirtualMachine.objects.get()
    domain = hv.domains["web"]
    domain.xml = domain.xml.replace("port='-1'", "port='5907'").replace('port="-1"', 'port="5907"')
    page = admin_client.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    assert "VNC on 127.0.0.1:5907 (password set)" in page and "pw123" not in page
