"""The Host admin (issue 15): list with health, last seen, VMs and usage; the host's page with facts shown
readably and Check now; adding and changing through the host service; the VM list's host column and filter."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.fakes import FakeDomain, FakeHosts
from tests.support.factories import VirtualMachineFactory
from tests.support.projects import join
from vms.host_models import Host
from vms.hypervisor import HostResources
from vms.hypervisor.documents.domain import domain_xml
from vms.services.design import domain_spec
from vms.services.hosts import hosts_check

pytestmark = pytest.mark.django_db

LIST = "/admin/vms/host/"
H2 = "qemu+tcp://10.99.0.2/system"
GIB = 2**30


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHosts:
    fakes = FakeHosts(pool_root=tmp_path)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", fakes.get)
    fakes.add(H2, host=HostResources(32 * GIB, cpus=8, model="x86_64", hostname="kvm2"))
    return fakes


def test_the_list_shows_health_last_seen_vms_and_usage_in_a_fixed_number_of_queries(admin_client, hosts, django_assert_max_num_queries):
    h2 = Host.objects.create(name="h2", uri=H2)
    hosts.down(H2)
    hosts_check()
    on_h2 = VirtualMachineFactory.create(name="on-h2", host=h2, status="running", vcpus=2, memory_mb=2048)
    hosts.by_uri[H2].domains["on-h2"] = FakeDomain(xml=domain_xml(domain_spec(on_h2)), state="running")  # still there when h2 is back
    page = admin_client.get(LIST).content.decode()
    assert '<b class="vapor-health-down"' in page and '<b class="vapor-health-up"' in page
    assert "h2" in page and H2 in page and "<small>VAPOR_LIBVIRT_URI</small>" in page
    assert "2/? vCPUs<br>2.0/? GiB" in page  # h2 never answered: no budget
    hosts.up(H2)
    hosts_check()
    for i in range(5):
        VirtualMachineFactory.create(name=f"more-{i}", host=h2, status="stopped")
    with django_assert_max_num_queries(12):
        page = admin_client.get(LIST).content.decode()
    assert "7/32 vCPUs<br>" in page


def test_the_page_shows_facts_readably_and_check_now_reads_the_host(admin_client, hosts):
    h2 = Host.objects.create(name="h2", uri=H2)
    page = admin_client.get(f"{LIST}{h2.pk}/change/").content.decode()
    assert "Not read yet" in page and 'id="vapor-host-check"' in page
    done = admin_client.post(f"{LIST}{h2.pk}/check/", follow=True)
    assert "Host h2 answers." in done.content.decode()
    page = admin_client.get(f"{LIST}{h2.pk}/change/").content.decode()
    for text in ("kvm2", "x86_64, KVM yes", "yes · yes · yes", "default (dir,", "br-internal, br0", "8 (x86_64) · 32.0 GiB"):
        assert text in page, text
    assert admin_client.get(f"{LIST}{h2.pk}/check/").status_code == 405
    hosts.down(H2)
    failed = admin_client.post(f"{LIST}{h2.pk}/check/", follow=True).content.decode()
    assert "Host h2 does not answer: cannot connect to" in failed


def test_adding_and_changing_go_through_the_service(admin_client, hosts, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        added = admin_client.post(LIST + "add/", {"name": "h2", "uri": H2, "enabled": "on", "cpu_overcommit": "4", "memory_overcommit": "1",
                                                  "labels": "{}"})  # fmt: skip
    assert added.status_code == 302, added.content.decode()[:2000]
    assert Host.objects.get(name="h2").health == "up"  # checked once saved
    bad = admin_client.post(LIST + "add/", {"name": "h3", "uri": "http://x/system", "cpu_overcommit": "4", "memory_overcommit": "1",
                                            "labels": "{}"})  # fmt: skip
    assert bad.status_code == 200 and "scheme" in bad.content.decode() and not Host.objects.filter(name="h3").exists()
    h2 = Host.objects.get(name="h2")
    changed = admin_client.post(f"{LIST}{h2.pk}/change/", {"uri": H2, "cpu_overcommit": "2", "memory_overcommit": "1.5",
                                                           "labels": '{"rack": "b2"}'})  # fmt: skip
    assert changed.status_code == 302, changed.content.decode()[:2000]
    h2.refresh_from_db()
    assert (h2.cpu_overcommit, h2.memory_overcommit, h2.labels, h2.enabled) == (2.0, 1.5, {"rack": "b2"}, False)
    VirtualMachineFactory.create(name="pinned", host=h2, status="running")
    refused = admin_client.post(f"{LIST}{h2.pk}/delete/", {"post": "yes"}, follow=True).content.decode()
    assert "pinned" in refused and Host.objects.filter(name="h2").exists()


def test_members_see_hosts_but_only_superusers_change_them(hosts):
    member = User.objects.create_user("op", password=None, is_staff=True)
    join(member, "operator", None)
    client = Client()
    client.force_login(member)
    h2 = Host.objects.create(name="h2", uri=H2)
    assert client.get(LIST).status_code == 200
    page = client.get(f"{LIST}{h2.pk}/change/").content.decode()
    assert 'id="vapor-host-check"' not in page and 'name="cpu_overcommit"' not in page
    assert client.post(f"{LIST}{h2.pk}/check/").status_code == 403
    assert client.get(LIST + "add/").status_code == 403
    assert hosts.asked[H2] == 0


def test_the_vm_list_shows_and_filters_by_host(admin_client, hosts):
    h2 = Host.objects.create(name="h2", uri=H2)
    VirtualMachineFactory.create(name="on-default")
    VirtualMachineFactory.create(name="on-h2", host=h2)
    page = admin_client.get("/admin/vms/virtualmachine/").content.decode()
    assert '<small class="vapor-vm-host">on h2</small>' in page and '<small class="vapor-vm-host">on default</small>' in page
    only = admin_client.get(f"/admin/vms/virtualmachine/?host__id__exact={h2.pk}").content.decode()
    assert "on-h2" in only and "on-default" not in only


def test_the_dashboard_lists_the_hosts_when_there_are_several(admin_client, hosts):
    page = admin_client.get("/admin/").content.decode()
    assert 'id="vapor-hosts"' not in page  # one host: the page as before
    h2 = Host.objects.create(name="h2", uri=H2)
    hosts_check()
    VirtualMachineFactory.create(name="big", host=h2, status="running", vcpus=4, memory_mb=4096)
    page = admin_client.get("/admin/").content.decode()
    assert 'id="vapor-hosts"' in page and 'data-host="h2"' in page and "4/32 vCPUs, 4.0/32.0 GiB" in page
