"""Projects (issue 11, point 6): who sees and changes which VMs and templates, quotas, pools and networks
per project, the default project, and the audit trail with user and source address.

The hypervisor is the in-memory fake; the real daemon's part is in
tests/integration/test_projects_real.py and the cross-project cells of the
authorization matrix in tests/reliability/test_authorization.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from projects.access import SYSTEM, Actor, visible_projects
from projects.models import DEFAULT_PROJECT, AuditEntry, Membership, Project
from tests.fakes import FakeHypervisor
from tests.support.api import CREATE_URL, post_create
from tests.support.projects import join
from vms.models import VirtualMachine, VmEvent, VmTemplate
from vms.services.requests import VmRequest
from vms.services.templates import TemplateData, template_create

pytestmark = pytest.mark.django_db

API = "/api/v1/virtualmachines/"
SMALL = {"memory": 256, "vcpus": 1, "disks": [{"size": 1}], "graphics": {"type": "none"}}


def _user(name: str, role: str | None = None, project: str | None = None, *, staff: bool = False) -> User:
    user = User.objects.create_user(name, password=None, is_staff=staff)
    if role:
        join(user, role, project)
    return user


def _client(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _vm(name: str, project: str | None = None) -> VirtualMachine:
    from vms.services.lifecycle import vm_create

    vm = vm_create(request=VmRequest(name=name, memory=256, vcpus=1, project=project))
    assert isinstance(vm, VirtualMachine)
    return vm


@pytest.fixture
def two_projects(hv: FakeHypervisor, run_tasks: Any) -> dict[str, Any]:
    """Project a with VM a-vm and template a-tpl, project b with b-vm and b-tpl; alice operates a, bob operates b."""
    for name in ("a", "b"):
        Project.objects.create(name=name)
        with run_tasks():
            _vm(f"{name}-vm", name)
        template_create(data=TemplateData(name=f"{name}-tpl", memory=512, vcpus=1, project=name))
    return {
        "alice": _user("alice", "operator", "a", staff=True),
        "bob": _user("bob", "operator", "b", staff=True),
        "a_vm": VirtualMachine.objects.get(name="a-vm"),
        "b_vm": VirtualMachine.objects.get(name="b-vm"),
    }


# --- the default project --------------------------------------------------------------


def test_a_one_person_install_needs_no_set_up(hv: FakeHypervisor, admin_user: User, run_tasks: Any) -> None:
    """The migration made `default`; a superuser's VM and template go there without naming a project."""
    assert Project.objects.filter(name=DEFAULT_PROJECT).exists()
    response = post_create(_client(admin_user), run_tasks, {"name": "solo", **SMALL})
    assert response.status_code == 202, response.json()
    assert response.json()["project"] == DEFAULT_PROJECT
    template = _client(admin_user).post(API + "templates", {"name": "t", "memory": 512, "vcpus": 1}, format="json")
    assert template.status_code == 201 and template.json()["project"] == DEFAULT_PROJECT


def test_an_operator_of_one_project_creates_there_without_naming_it(two_projects: dict[str, Any], run_tasks: Any) -> None:
    response = post_create(_client(two_projects["alice"]), run_tasks, {"name": "mine", **SMALL})
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get(name="mine").project.name == "a"


def test_an_operator_of_several_projects_must_name_one(two_projects: dict[str, Any], run_tasks: Any) -> None:
    join(two_projects["alice"], "operator", "b")
    response = post_create(_client(two_projects["alice"]), run_tasks, {"name": "which", **SMALL})
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "project" and "a, b" in body["detail"]
    assert not VirtualMachine.objects.filter(name="which").exists()


def test_a_vm_made_from_a_template_goes_to_the_templates_project(two_projects: dict[str, Any], run_tasks: Any) -> None:
    join(two_projects["alice"], "operator", "b")
    response = post_create(_client(two_projects["alice"]), run_tasks, {"name": "from-b", "template": "b-tpl"})
    assert response.status_code == 202, response.json()
    assert response.json()["project"] == "b"


# --- scoping: lists, details, actions ---------------------------------------------------


def test_lists_show_only_the_users_projects(two_projects: dict[str, Any]) -> None:
    alice = _client(two_projects["alice"])
    assert [v["name"] for v in alice.get(API).json()["virtualmachines"]] == ["a-vm"]
    assert [t["name"] for t in alice.get(API + "templates").json()["templates"]] == ["a-tpl"]
    assert alice.get(API + "?project=b").json()["virtualmachines"] == []


def test_a_superuser_sees_every_project(two_projects: dict[str, Any], admin_user: User) -> None:
    names = [v["name"] for v in _client(admin_user).get(API).json()["virtualmachines"]]
    assert names == ["a-vm", "b-vm"]
    assert [v["name"] for v in _client(admin_user).get(API + "?project=b").json()["virtualmachines"]] == ["b-vm"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "{vm}"),
        ("delete", "{vm}"),
        ("post", "{vm}/start"),
        ("post", "{vm}/force-stop"),
        ("get", "templates/b-tpl"),
        ("patch", "templates/b-tpl"),
        ("delete", "templates/b-tpl"),
    ],
)
def test_another_projects_objects_are_not_found(two_projects: dict[str, Any], hv: FakeHypervisor, method: str, url: str) -> None:
    before = hv.calls if hasattr(hv, "calls") else None
    response = getattr(_client(two_projects["alice"]), method)(API + url.format(vm=two_projects["b_vm"].pk), {}, format="json")
    assert response.status_code == 404, response.content
    assert VirtualMachine.objects.filter(name="b-vm", status="running").exists()
    assert VmTemplate.objects.filter(name="b-tpl", memory_mb=512).exists()
    assert before is None or hv.calls == before


def test_a_viewer_sees_but_may_not_act(two_projects: dict[str, Any], run_tasks: Any) -> None:
    carol = _user("carol", "viewer", "a")
    client = _client(carol)
    vm = two_projects["a_vm"]
    assert client.get(API + str(vm.pk)).status_code == 200
    assert client.post(API + f"{vm.pk}/force-stop").status_code == 403
    assert client.delete(API + str(vm.pk)).status_code == 403
    refused = post_create(client, run_tasks, {"name": "nope", **SMALL, "project": "a"})
    assert refused.status_code == 403, refused.json()
    assert VirtualMachine.objects.get(pk=vm.pk).status == "running" and not VirtualMachine.objects.filter(name="nope").exists()


def test_a_viewer_in_one_project_and_operator_in_another_is_refused_403_where_they_only_view(two_projects: dict[str, Any]) -> None:
    """The role is checked on the object's project, not on the strongest role the user holds anywhere."""
    join(two_projects["bob"], "viewer", "a")
    client = _client(two_projects["bob"])
    response = client.post(API + f"{two_projects['a_vm'].pk}/force-stop")
    assert response.status_code == 403
    assert "viewer in project a" in response.json()["detail"]
    assert client.post(API + f"{two_projects['b_vm'].pk}/force-stop").status_code == 200


def test_naming_a_project_that_is_not_yours_is_404_on_the_field(two_projects: dict[str, Any], run_tasks: Any) -> None:
    for name in ("b", "nosuch"):
        response = post_create(_client(two_projects["alice"]), run_tasks, {"name": "x", **SMALL, "project": name})
        assert response.status_code == 404, response.json()
        assert response.json()["field"] == "project" and response.json()["code"] == "project_not_found"
    assert not VirtualMachine.objects.filter(name="x").exists()


def test_a_template_of_another_project_cannot_be_used(two_projects: dict[str, Any], run_tasks: Any) -> None:
    response = post_create(_client(two_projects["alice"]), run_tasks, {"name": "x", "template": "b-tpl"})
    assert response.status_code == 404 and response.json()["field"] == "template"
    assert "b-tpl" not in response.json()["detail"].split("(")[-1]  # the hint names only templates alice may see


def test_a_user_in_no_project_sees_nothing_and_creates_nothing(two_projects: dict[str, Any], run_tasks: Any) -> None:
    """Django permissions alone (no membership) open no project."""
    from django.contrib.auth.models import Permission

    loner = _user("loner")
    loner.user_permissions.set(Permission.objects.filter(content_type__app_label="vms"))
    client = _client(loner)
    assert client.get(API).json()["virtualmachines"] == []
    assert client.get(API + str(two_projects["a_vm"].pk)).status_code == 404
    assert post_create(client, run_tasks, {"name": "x", **SMALL}).status_code == 403


def test_roles_grant_the_model_permissions() -> None:
    viewer, operator, nobody = _user("v", "viewer"), _user("o", "operator"), _user("n")
    assert viewer.has_perm("vms.view_virtualmachine") and not viewer.has_perm("vms.add_virtualmachine")
    assert operator.has_perm("vms.add_virtualmachine") and operator.has_perm("vms.delete_vmtemplate")
    assert not operator.has_perm("isos.add_isoimage")  # the ISO library is shared: its rights are not a project's
    assert not nobody.has_perm("vms.view_virtualmachine")
    admin = _user("pa", "admin")
    assert admin.has_perm("projects.view_auditentry") and not operator.has_perm("projects.view_auditentry")


# --- quotas -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "limit", "payload", "use", "asked"),
    [
        ("max_vms", 1, {}, 1, 1),
        ("max_vcpus", 2, {"vcpus": 2}, 1, 2),
        ("max_memory_mb", 600, {"memory": 512}, 256, 512),
        ("max_disk_gb", 10, {"disks": [{"size": 5}, {"size": 5}]}, 1, 10),
    ],
)
def test_a_quota_refuses_with_409_naming_the_use_and_the_limit(
    hv: FakeHypervisor, run_tasks: Any, admin_user: User, quota: str, limit: int, payload: dict[str, Any], use: int, asked: int
) -> None:
    Project.objects.create(name="q", **{quota: limit})
    client = _client(admin_user)
    assert post_create(client, run_tasks, {"name": "first", **SMALL, "project": "q"}).status_code == 202
    volumes = sorted(p.name for p in hv.pool_dir.iterdir())
    audits = AuditEntry.objects.count()
    response = post_create(client, run_tasks, {"name": "second", **SMALL, "project": "q", **payload})
    assert response.status_code == 409, response.json()
    body = response.json()
    assert (body["code"], body["quota"], body["use"], body["asked"], body["limit"], body["project"]) == (
        "quota_exceeded", quota, use, asked, limit, "q"
    )  # fmt: skip
    assert f"may use {limit}" in body["detail"] and f"uses {use}" in body["detail"]
    # Nothing behind: no row, no domain, no volume, no audit entry.
    assert not VirtualMachine.objects.filter(name="second").exists() and "second" not in hv.domains
    assert sorted(p.name for p in hv.pool_dir.iterdir()) == volumes and AuditEntry.objects.count() == audits


def test_a_dry_run_is_refused_by_the_quota_too(hv: FakeHypervisor, admin_user: User) -> None:
    Project.objects.create(name="q", max_vcpus=1)
    response = _client(admin_user).post(CREATE_URL + "?dry_run=true", {"name": "dry", **SMALL, "vcpus": 2, "project": "q"}, format="json")
    assert response.status_code == 409 and response.json()["quota"] == "max_vcpus"


def test_deleting_a_vm_gives_its_share_back(hv: FakeHypervisor, run_tasks: Any, admin_user: User) -> None:
    Project.objects.create(name="q", max_vms=1)
    client = _client(admin_user)
    first = post_create(client, run_tasks, {"name": "first", **SMALL, "project": "q"})
    assert post_create(client, run_tasks, {"name": "second", **SMALL, "project": "q"}).status_code == 409
    assert client.delete(API + str(first.json()["id"])).status_code == 204
    assert post_create(client, run_tasks, {"name": "second", **SMALL, "project": "q"}).status_code == 202


def test_quotas_of_one_project_do_not_count_another(hv: FakeHypervisor, run_tasks: Any, admin_user: User) -> None:
    Project.objects.create(name="q", max_vms=1)
    Project.objects.create(name="r", max_vms=1)
    client = _client(admin_user)
    assert post_create(client, run_tasks, {"name": "one", **SMALL, "project": "q"}).status_code == 202
    assert post_create(client, run_tasks, {"name": "two", **SMALL, "project": "r"}).status_code == 202


def test_the_disk_quota_counts_each_new_volume(hv: FakeHypervisor, run_tasks: Any, admin_user: User) -> None:
    response = post_create(_client(admin_user), run_tasks, {"name": "d", **SMALL, "disks": [{"size": 3}, {"size": 4}]})
    assert VirtualMachine.objects.get(pk=response.json()["id"]).disk_gb == 7


# --- pools, networks and bridges per project ------------------------------------------------


@pytest.mark.parametrize(
    ("restriction", "payload", "field"),
    [
        ({"allowed_pools": "fast, other"}, {"storage_pool": "default"}, "storage_pool"),
        ({"allowed_networks": "isolated"}, {"networks": [{"type": "nat", "source": "default"}]}, "networks.0.source"),
        ({"allowed_bridges": "br-a"}, {"networks": [{"type": "nat", "source": "default"}, {"type": "bridge", "source": "br0"}]},
         "networks.1.source"),
    ],
)  # fmt: skip
def test_a_pool_or_network_not_open_to_the_project_is_400_before_the_host_is_asked(
    hv: FakeHypervisor, run_tasks: Any, admin_user: User, monkeypatch: pytest.MonkeyPatch, restriction: dict[str, str],
    payload: dict[str, Any], field: str,
) -> None:  # fmt: skip
    Project.objects.create(name="r", **restriction)
    asked: list[str] = []
    for method in ("pool", "network_exists", "bridge_exists", "domain_exists"):
        real = getattr(hv, method)

        def spy(*a: Any, _m: str = method, _r: Any = real, **k: Any) -> Any:
            asked.append(_m)
            return _r(*a, **k)

        monkeypatch.setattr(hv, method, spy)
    response = post_create(_client(admin_user), run_tasks, {"name": "r1", **SMALL, "project": "r", **payload})
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == field and response.json()["code"] == "not_allowed_in_project"
    assert "not open to project r" in response.json()["detail"]
    assert asked == [] and not VirtualMachine.objects.filter(name="r1").exists()


def test_an_allowed_pool_and_network_are_accepted(hv: FakeHypervisor, run_tasks: Any, admin_user: User) -> None:
    Project.objects.create(name="r", allowed_pools="default", allowed_networks="default")
    assert post_create(_client(admin_user), run_tasks, {"name": "ok", **SMALL, "project": "r"}).status_code == 202


# --- the audit trail ------------------------------------------------------------------------


def test_every_api_action_is_recorded_with_user_and_address(two_projects: dict[str, Any], run_tasks: Any) -> None:
    client = _client(two_projects["alice"])
    with run_tasks():
        created = client.post(CREATE_URL, {"name": "audited", **SMALL}, format="json", REMOTE_ADDR="192.0.2.7")
    vm_id = created.json()["id"]
    client.post(API + f"{vm_id}/force-stop", REMOTE_ADDR="192.0.2.8")
    client.post(API + "templates", {"name": "t2", "memory": 512, "vcpus": 1}, format="json", REMOTE_ADDR="192.0.2.9")
    client.delete(API + str(vm_id), REMOTE_ADDR="192.0.2.10")
    rows = list(AuditEntry.objects.order_by("id").filter(username="alice").values_list("action", "target", "source_address", "via"))
    assert rows == [
        ("vm.create", "VM audited", "192.0.2.7", "api"),
        ("vm.force-stop", "VM audited", "192.0.2.8", "api"),
        ("template.create", "template t2", "192.0.2.9", "api"),
        ("vm.delete", "VM audited", "192.0.2.10", "api"),
    ]
    assert AuditEntry.objects.filter(username="alice").values_list("project__name", flat=True).distinct().get() == "a"


def test_the_vms_event_log_names_who_asked(two_projects: dict[str, Any], run_tasks: Any) -> None:
    client = _client(two_projects["alice"])
    vm = two_projects["a_vm"]
    client.post(API + f"{vm.pk}/force-stop", REMOTE_ADDR="192.0.2.8")
    event = VmEvent.objects.filter(vm=vm, step="force-stop").get()
    assert (event.user, event.source_address) == (two_projects["alice"], "192.0.2.8")
    shown = client.get(API + str(vm.pk)).json()["events"]
    assert {"step": "force-stop", "user": "alice", "source_address": "192.0.2.8"}.items() <= shown[-1].items()


def test_admin_actions_are_recorded_as_admin(two_projects: dict[str, Any]) -> None:
    client = Client(REMOTE_ADDR="198.51.100.4")
    client.force_login(two_projects["alice"])
    vm = two_projects["a_vm"]
    response = client.post("/admin/vms/virtualmachine/", {"action": "action_force_stop", "_selected_action": str(vm.pk), "index": "0"})
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="vm.force-stop")
    assert entry.project is not None
    assert (entry.username, entry.via, entry.source_address, entry.project.name) == ("alice", "admin", "198.51.100.4", "a")


def test_the_admin_audit_list_filters_by_user_project_and_action(two_projects: dict[str, Any], admin_client: Client) -> None:
    for who, vm in (("alice", "a_vm"), ("bob", "b_vm")):
        _client(two_projects[who]).post(API + f"{two_projects[vm].pk}/force-stop")
    page = admin_client.get("/admin/projects/auditentry/")
    assert page.status_code == 200 and "vm.force-stop" in page.content.decode()
    by_user = admin_client.get(f"/admin/projects/auditentry/?user__id__exact={two_projects['bob'].pk}").content.decode()
    assert "VM b-vm" in by_user and "VM a-vm" not in by_user
    project_a = Project.objects.get(name="a").pk
    by_project = admin_client.get(f"/admin/projects/auditentry/?project__id__exact={project_a}").content.decode()
    assert "VM a-vm" in by_project and "VM b-vm" not in by_project
    by_action = admin_client.get("/admin/projects/auditentry/?action=template.create").content.decode()
    assert "template a-tpl" in by_action and "VM a-vm" not in by_action


def test_a_project_admin_sees_the_audit_of_their_project_only(two_projects: dict[str, Any]) -> None:
    _client(two_projects["alice"]).post(API + f"{two_projects['a_vm'].pk}/force-stop")
    _client(two_projects["bob"]).post(API + f"{two_projects['b_vm'].pk}/force-stop")
    dana = _user("dana", "admin", "a", staff=True)
    client = Client()
    client.force_login(dana)
    page = client.get("/admin/projects/auditentry/").content.decode()
    assert "VM a-vm" in page and "VM b-vm" not in page
    client.force_login(two_projects["alice"])  # an operator: no audit list
    assert client.get("/admin/projects/auditentry/").status_code == 403


# --- the admin -------------------------------------------------------------------------------


def test_the_admin_shows_only_the_users_projects(two_projects: dict[str, Any]) -> None:
    client = Client()
    client.force_login(two_projects["alice"])
    listing = client.get("/admin/vms/virtualmachine/").content.decode()
    assert "a-vm" in listing and "b-vm" not in listing
    assert client.get(f"/admin/vms/virtualmachine/{two_projects['b_vm'].pk}/change/").status_code == 302  # "does not exist"
    templates = client.get("/admin/vms/vmtemplate/").content.decode()
    assert "a-tpl" in templates and "b-tpl" not in templates
    # An action naming another project's VM does nothing to it.
    client.post(
        "/admin/vms/virtualmachine/", {"action": "action_force_stop", "_selected_action": str(two_projects["b_vm"].pk), "index": "0"}
    )
    assert VirtualMachine.objects.get(name="b-vm").status == "running"
    create_page = client.get("/admin/vms/virtualmachine/add/").content.decode()
    assert '<option value="a"' in create_page and '<option value="b"' not in create_page


def test_the_admin_create_page_puts_the_vm_in_the_chosen_project(two_projects: dict[str, Any], run_tasks: Any) -> None:
    from tests.reliability.test_authorization import VM_FORM

    join(two_projects["alice"], "operator", "b")
    client = Client()
    client.force_login(two_projects["alice"])
    with run_tasks():
        response = client.post("/admin/vms/virtualmachine/add/", {**VM_FORM, "name": "in-b", "project": "b"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert VirtualMachine.objects.get(name="in-b").project.name == "b"


def test_the_project_page_shows_use_against_each_quota(two_projects: dict[str, Any], admin_client: Client) -> None:
    Project.objects.filter(name="a").update(max_vms=3, max_vcpus=8)
    page = admin_client.get("/admin/projects/project/").content.decode()
    assert "1 / 3" in page and "1 / 8" in page and "256 (no limit)" in page


def test_members_see_their_projects_read_only(two_projects: dict[str, Any]) -> None:
    client = Client()
    client.force_login(two_projects["alice"])
    listing = client.get("/admin/projects/project/")
    assert listing.status_code == 200
    body = listing.content.decode()
    assert ">a<" in body and ">b<" not in body
    project = Project.objects.get(name="a")
    page = client.get(f"/admin/projects/project/{project.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    assert Membership.objects.filter(project=project).count() == 1


def test_visible_projects_for_system_and_superusers(two_projects: dict[str, Any], admin_user: User) -> None:
    assert set(visible_projects(SYSTEM).values_list("name", flat=True)) >= {"a", "b"}
    assert set(visible_projects(Actor(user=admin_user)).values_list("name", flat=True)) >= {"a", "b"}
    assert list(visible_projects(two_projects["alice"]).values_list("name", flat=True)) == ["a"]


def test_the_dashboard_counts_only_the_users_vms(two_projects: dict[str, Any], admin_user: User) -> None:
    from dashboard.selectors import dashboard_for

    VirtualMachine.objects.filter(name="b-vm").update(status="failed", error="seeded")
    alice, everyone = dashboard_for(user=two_projects["alice"]), dashboard_for(user=admin_user)
    assert alice.vms is not None and everyone.vms is not None
    assert (alice.vms.total, everyone.vms.total) == (1, 2)
    assert [f.name for f in alice.failures or []] == [] and [f.name for f in everyone.failures or []] == ["b-vm"]


def test_the_services_refuse_a_non_member_even_when_an_entry_point_would_not(two_projects: dict[str, Any], hv: FakeHypervisor) -> None:
    """Defence in depth: the entry points look objects up in the user's projects, and the services check again."""
    from vaporsite.errors import Forbidden, NotFound
    from vms.services.lifecycle import vm_action, vm_delete
    from vms.services.templates import template_delete

    bob = Actor(user=two_projects["bob"], source_address="192.0.2.1", via="api")
    with pytest.raises(NotFound):
        vm_action(vm=two_projects["a_vm"], action="force-stop", actor=bob)
    with pytest.raises(NotFound):
        vm_delete(vm=two_projects["a_vm"], actor=bob)
    with pytest.raises(NotFound):
        template_delete(template=VmTemplate.objects.get(name="a-tpl"), actor=bob)
    join(two_projects["bob"], "viewer", "a")
    with pytest.raises(Forbidden):
        vm_action(vm=two_projects["a_vm"], action="force-stop", actor=bob)
    assert hv.domain_state("a-vm") == "running" and VmTemplate.objects.filter(name="a-tpl").exists()
