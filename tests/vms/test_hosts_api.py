"""Hosts as data (issue 15, point 1): /api/v1/hosts, the health check, usage, and `manage.py hosts_check`, on FakeHosts."""

from __future__ import annotations

import threading
import time
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django_q.models import Schedule
from rest_framework.test import APIClient

from tests.fakes import FakeHosts
from tests.support.factories import VirtualMachineFactory
from tests.support.projects import join
from vms import tasks
from vms.host_models import DEFAULT_HOST, Host, HostHealth
from vms.hypervisor import FirmwareSupport, HostResources
from vms.services.hosts import host_usage, hosts_check

pytestmark = pytest.mark.django_db

API = "/api/v1/hosts"
H2 = "qemu+tcp://10.99.0.2/system"
GIB = 2**30


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHosts:
    fakes = FakeHosts(pool_root=tmp_path)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", fakes.get)
    return fakes


@pytest.fixture
def root() -> APIClient:
    client = APIClient()
    client.force_authenticate(User.objects.create_superuser("root", password=None))
    return client


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_adding_a_host_reads_it_at_once_and_shows_every_field(hosts, root):
    fake = hosts.add(H2, host=HostResources(64 * GIB, cpus=16, model="x86_64", hostname="kvm2"))
    fake.firmware = FirmwareSupport(uefi=True, secure_boot=False, tpm=False)
    made = root.post(API, {"name": "h2", "uri": H2, "labels": {"rack": "b2"}}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert set(body) >= {"name", "uri", "enabled", "maintenance", "cpu_overcommit", "memory_overcommit", "labels", "health",
                         "last_seen_at", "last_checked_at", "last_error", "facts", "vm_count", "usage"}  # fmt: skip
    assert (body["name"], body["uri"], body["health"], body["last_error"], body["labels"]) == ("h2", H2, "up", "", {"rack": "b2"})
    assert body["last_seen_at"] and body["last_checked_at"]
    facts = body["facts"]
    assert (facts["arch"], facts["kvm"], facts["uefi"], facts["secure_boot"], facts["tpm"]) == ("x86_64", True, True, False, False)
    assert (facts["cpus"], facts["memory_bytes"], facts["hostname"]) == (16, 64 * GIB, "kvm2")
    assert [p["name"] for p in facts["pools"]] == ["default"] and set(facts["pools"][0]) >= {"name", "type", "capacity", "available"}
    assert [n["name"] for n in facts["networks"]] == ["default"]
    assert facts["bridges"] == ["br-internal", "br0"] and facts["read_at"]
    assert body["vm_count"] == 0
    assert body["usage"] == {"vms": 0, "vcpus": 0, "vcpus_budget": 64, "vcpus_free": 64, "memory_bytes": 0,
                             "memory_budget_bytes": 64 * GIB, "memory_free_bytes": 64 * GIB}  # fmt: skip
    assert root.get(API + "/h2").json()["facts"] == facts
    assert [h["name"] for h in root.get(API).json()["hosts"]] == [DEFAULT_HOST, "h2"]


def test_a_host_that_does_not_answer_is_added_down_unless_require_up(hosts, root):
    hosts.add(H2)
    hosts.down(H2)
    refused = root.post(API + "?require_up=true", {"name": "h2", "uri": H2}, format="json")
    assert refused.status_code == 400 and refused.json()["field"] == "uri", refused.content
    assert "cannot connect to" in refused.json()["detail"] and not Host.objects.filter(name="h2").exists()
    made = root.post(API, {"name": "h2", "uri": H2}, format="json")
    assert made.status_code == 201, made.content
    assert (made.json()["health"], made.json()["facts"], made.json()["last_seen_at"]) == ("down", {}, None)
    assert made.json()["last_error"].startswith("cannot connect to " + H2)
    hosts.up(H2)
    checked = root.post(API + "/h2/check")
    assert checked.status_code == 200 and checked.json()["health"] == "up" and checked.json()["last_error"] == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "h2", "uri": "http://10.99.0.2/system"}, "uri"),
        ({"name": "h2", "uri": "xen+ssh://10.99.0.2/system"}, "uri"),
        ({"name": "h2", "uri": "qemu+tcp://10.99.0.2"}, "uri"),
        ({"name": "h2", "uri": "not a uri"}, "uri"),
        ({"name": "H2!", "uri": H2}, "name"),
        ({"name": "-h2", "uri": H2}, "name"),
        ({"uri": H2}, "name"),
        ({"name": "h2"}, "uri"),
        ({"name": "h2", "uri": H2, "cpu_overcommit": 0}, "cpu_overcommit"),
        ({"name": "h2", "uri": H2, "memory_overcommit": 1000}, "memory_overcommit"),
        ({"name": "h2", "uri": H2, "labels": {"rack": ["a"]}}, "labels"),
        ({"name": "h2", "uri": H2, "colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_400_naming_the_field(hosts, root, body, field):
    response = root.post(API, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert not Host.objects.exclude(name=DEFAULT_HOST).exists()


def test_every_libvirt_scheme_vapor_knows_is_accepted(hosts, root):
    for i, scheme in enumerate(("qemu", "qemu+tcp", "qemu+tls", "qemu+ssh", "qemu+unix", "test")):
        uri = f"{scheme}://user@10.99.0.{i}/system" if scheme not in ("qemu", "qemu+unix", "test") else f"{scheme}:///system?n={i}"
        hosts.add(uri)
        assert root.post(API, {"name": f"h{i}", "uri": uri}, format="json").status_code == 201, scheme


def test_names_and_uris_are_unique(hosts, root, settings):
    hosts.add(H2)
    assert root.post(API, {"name": "h2", "uri": H2}, format="json").status_code == 201
    again = root.post(API, {"name": "h2", "uri": "qemu+tcp://10.99.0.3/system"}, format="json")
    assert (again.status_code, again.json()["code"], again.json()["field"]) == (409, "name_taken", "name")
    same_uri = root.post(API, {"name": "h3", "uri": H2}, format="json")
    assert (same_uri.status_code, same_uri.json()["code"], same_uri.json()["field"]) == (409, "uri_taken", "uri")
    default_uri = root.post(API, {"name": "h4", "uri": settings.VAPOR.libvirt_uri}, format="json")
    assert (default_uri.status_code, default_uri.json()["code"]) == (409, "uri_taken")  # the default host's, by the setting


def test_change_and_remove(hosts, root):
    hosts.add(H2)
    root.post(API, {"name": "h2", "uri": H2}, format="json")
    changed = root.patch(API + "/h2", {"cpu_overcommit": 2, "maintenance": True, "labels": {"ssd": True}}, format="json")
    assert changed.status_code == 200, changed.content
    assert (changed.json()["cpu_overcommit"], changed.json()["maintenance"], changed.json()["labels"]) == (2.0, True, {"ssd": True})
    renamed = root.patch(API + "/h2", {"name": "h9"}, format="json")
    assert (renamed.status_code, renamed.json()["field"]) == (400, "name")
    default = root.patch(API + "/default", {"uri": H2.replace(".2", ".7")}, format="json")
    assert (default.status_code, default.json()["field"]) == (400, "uri")
    assert root.delete(API + "/default").json()["code"] == "host_default"

    VirtualMachineFactory.create(name="busy-1", host=Host.objects.get(name="h2"), status="running")
    VirtualMachineFactory.create(name="busy-2", host=Host.objects.get(name="h2"), status="failed")
    in_use = root.delete(API + "/h2")
    assert (in_use.status_code, in_use.json()["code"], in_use.json()["vms"]) == (409, "host_in_use", ["busy-1", "busy-2"])
    moved = root.patch(API + "/h2", {"uri": "qemu+tcp://10.99.0.9/system"}, format="json")
    assert (moved.status_code, moved.json()["code"]) == (409, "host_in_use")
    Host.objects.get(name="h2").vms.all().delete()
    assert root.delete(API + "/h2").status_code == 204
    assert root.get(API + "/h2").status_code == 404
    assert root.delete(API + "/nope").status_code == 404


def test_any_signed_in_user_reads_hosts_only_those_given_the_permission_change_them(hosts):
    hosts.add(H2)
    anonymous = APIClient()
    assert anonymous.get(API).status_code == 401
    member = User.objects.create_user("viewer", password=None, is_staff=True)
    join(member, "operator", None)
    client = client_for(member)
    assert client.get(API).status_code == 200
    assert client.get(API + "/default").status_code == 200
    before = dict(hosts.asked)
    refused = [
        client.post(API, {"name": "h2", "uri": H2}, format="json"),
        client.patch(API + "/default", {"enabled": False}, format="json"),
        client.delete(API + "/default"),
        client.post(API + "/default/check"),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert dict(hosts.asked) == before and list(Host.objects.values_list("name", "enabled")) == [(DEFAULT_HOST, True)]
    member.user_permissions.add(Permission.objects.get(codename="add_host"))
    member = User.objects.get(pk=member.pk)  # permissions are cached per user object
    assert client_for(member).post(API, {"name": "h2", "uri": H2}, format="json").status_code == 201


def test_usage_counts_live_vms_against_the_overcommitted_budget(hosts):
    hosts.add(H2, host=HostResources(8 * GIB, cpus=4, model="x86_64", hostname="kvm2"))
    host = Host.objects.create(name="h2", uri=H2, cpu_overcommit=2.0, memory_overcommit=1.5)
    assert host_usage(host).vcpus_budget is None  # never read: no budget yet
    hosts_check(hosts=[host])
    host.refresh_from_db()
    for i, status in enumerate(("running", "stopped", "provisioning", "unknown", "failed", "deleting", "missing")):
        VirtualMachineFactory.create(name=f"vm{i}", host=host, status=status, vcpus=2, memory_mb=1024)
    used = host_usage(host)
    assert (used.vms, used.vcpus, used.memory_bytes) == (4, 8, 4 * GIB)  # failed, deleting and missing hold nothing
    assert (used.vcpus_budget, used.vcpus_free) == (8, 0)
    assert (used.memory_budget_bytes, used.memory_free_bytes) == (12 * GIB, 8 * GIB)


def test_the_check_reads_hosts_in_parallel_and_a_hung_host_is_down_within_the_budget(hosts):
    for i in range(3):
        hosts.add(f"qemu+tcp://10.99.0.{i}/system")
        Host.objects.create(name=f"h{i}", uri=f"qemu+tcp://10.99.0.{i}/system")
    hosts.down("qemu+tcp://10.99.0.1/system")
    release = threading.Event()
    hung = hosts.by_uri["qemu+tcp://10.99.0.2/system"]

    def hang() -> HostResources:
        release.wait(10)
        return hung.host

    hung.host_resources = hang
    started = time.monotonic()
    try:
        health = hosts_check(budget=0.5)
    finally:
        release.set()
    assert time.monotonic() - started < 3
    assert health == {DEFAULT_HOST: "up", "h0": "up", "h1": "down", "h2": "down"}
    h2 = Host.objects.get(name="h2")
    assert (h2.health, h2.last_error, h2.last_seen_at) == (HostHealth.DOWN, "no answer within 0.5 s", None)
    assert Host.objects.get(name="h1").last_error.startswith("cannot connect to qemu+tcp://10.99.0.1/system")


def test_the_schedule_and_the_command(hosts):
    assert Schedule.objects.filter(func="vms.tasks.check_hosts", minutes=1, repeats=-1).exists()
    hosts.add(H2)
    Host.objects.create(name="h2", uri=H2)
    assert tasks.check_hosts() == {DEFAULT_HOST: "up", "h2": "up"}
    out = StringIO()
    call_command("hosts_check", stdout=out)
    assert "h2" in out.getvalue() and "up" in out.getvalue() and "vCPUs 0/32" in out.getvalue()
    hosts.down(H2)
    with pytest.raises(CommandError, match="down: h2"):
        call_command("hosts_check", "h2", stdout=StringIO())
    with pytest.raises(CommandError, match="no host named nope"):
        call_command("hosts_check", "nope", stdout=StringIO())
