"""The admin's create page: cloud-init fields and the live-change maxima, through the same service as create-enhanced.

Each field left empty is the template's (else Vapor's default); what is filled in overrides it field by field;
the service's errors land on the box at fault; a refused form writes nothing.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support.sshkeys import ed25519_key
from tests.vms.test_admin import ADD, form_data
from tests.vms.test_cloud_init import USER_DATA, read_seed
from vms.cloud_init_models import SshPublicKey, VmCloudInit
from vms.hypervisor.documents.domain import parse_definition
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


def post(admin_client, run_tasks, **fields):
    with run_tasks():
        return admin_client.post(ADD, form_data(name="ci-admin", **fields))


def field_errors(html: str, name: str) -> str:
    """The error list Django puts above field `name` (empty when there is none)."""
    found = re.search(rf'<div class="form-row field-{name} errors">\s*<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', html, re.DOTALL)
    return found.group(1) if found else ""


def test_the_page_offers_the_cloud_init_fields_and_the_maxima_folded_away(admin_client, hv):
    page = admin_client.get(ADD).content.decode()
    names = ("max_memory", "max_vcpus", "ci_enabled", "ci_hostname", "ci_ssh_keys", "ci_user_data", "ci_network_config", "ci_meta_data")
    for name in names:
        assert f'name="{name}"' in page, name
    assert "First boot (cloud-init)" in page
    assert re.search(r'id="cloud-init-fields">\s*<details>', page)  # folded: nothing asked of those who need none


def test_a_vm_made_in_the_admin_gets_the_seed_it_was_given(admin_client, hv, run_tasks):
    key = ed25519_key("ops@desk")
    # Browsers send CRLF in text boxes: a #! script with CRs would not run, so they are made LF.
    script = "#!/bin/sh\r\necho hello > /root/hello\r\n"
    response = post(
        admin_client, run_tasks, ci_hostname="web-a", ci_ssh_keys=f"\r\n{key}\r\n\r\n", ci_user_data=script, ci_meta_data="zone: r1"
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    vm = VirtualMachine.objects.get(name="ci-admin")
    seed = VmCloudInit.objects.get(vm=vm)
    assert seed.hostname == "web-a" and seed.ssh_authorized_keys == [key]
    label, files = read_seed(hv.pool_dir / "ci-admin-cidata.iso")
    assert label == "cidata"
    assert files["user-data"] == "#!/bin/sh\necho hello > /root/hello\n"
    meta = yaml.safe_load(files["meta-data"])
    assert meta["local-hostname"] == "web-a" and meta["public-keys"] == [key] and meta["zone"] == "r1"
    assert f"<source file='{hv.pool_dir / 'ci-admin-cidata.iso'}'" in hv.domain_xml("ci-admin").replace('"', "'")


def test_the_box_alone_makes_a_seed_with_the_profile_keys(admin_client, admin_user, hv, run_tasks):
    key = ed25519_key("admin@laptop")
    SshPublicKey.objects.create(user=admin_user, name="laptop", key=key, fingerprint="-")
    assert post(admin_client, run_tasks, ci_enabled="on").status_code == 302
    seed = VmCloudInit.objects.get(vm__name="ci-admin")
    assert seed.hostname == "ci-admin" and seed.ssh_authorized_keys == [key]


def test_nothing_filled_in_makes_no_seed(admin_client, hv, run_tasks):
    assert post(admin_client, run_tasks).status_code == 302
    assert VirtualMachine.objects.filter(name="ci-admin").exists() and not VmCloudInit.objects.exists()
    assert not (hv.pool_dir / "ci-admin-cidata.iso").exists()


@pytest.mark.parametrize(
    ("fields", "box", "words"),
    [
        ({"ci_user_data": "#cloud-config\npackages: [nginx\n"}, "ci_user_data", "line"),
        ({"ci_user_data": "echo no shebang\n"}, "ci_user_data", "#cloud-config"),
        ({"ci_hostname": "bad_name!"}, "ci_hostname", ""),
        ({"ci_network_config": "version: 7\n"}, "ci_network_config", "version"),
        ({"ci_meta_data": "- a list\n"}, "ci_meta_data", "mapping"),
    ],
)
def test_a_mistake_is_shown_on_its_box_and_nothing_is_made(admin_client, hv, run_tasks, fields, box, words):
    response = post(admin_client, run_tasks, **fields)
    assert response.status_code == 200  # the form again
    html = response.content.decode()
    errors = field_errors(html, box)
    assert errors and words.lower() in errors.lower(), (box, errors)
    assert re.search(r'id="cloud-init-fields">\s*<details open>', html)  # unfolded where the error is
    assert not VirtualMachine.objects.exists() and not VmCloudInit.objects.exists()
    assert hv.list_domain_names() == [] and not list(hv.pool_dir.iterdir())


def test_a_bad_key_names_its_line(admin_client, hv, run_tasks):
    good = ed25519_key("one")
    response = post(admin_client, run_tasks, ci_ssh_keys=f"{good}\n\nssh-ed25519 not*base64 two\n")
    errors = field_errors(response.content.decode(), "ci_ssh_keys")
    assert "Line 2:" in errors and "base64" in errors  # the second key given (blank lines are not counted)
    assert not VirtualMachine.objects.exists()


def test_the_template_note_says_what_it_sets_never_the_user_data(admin_client, vm_api, hv, run_tasks):
    tkey = ed25519_key("template")
    template = {"name": "ci-tpl", "disks": [{"size": 1}], "cloud_init": {"user_data": USER_DATA, "ssh_authorized_keys": [tkey]}}
    assert vm_api.post("/api/v1/virtualmachines/templates", template, format="json").status_code == 201
    page = admin_client.get(ADD + "?template=ci-tpl").content.decode()
    note = re.search(r'id="cloud-init-template">(.*?)</p>', page, re.DOTALL)
    assert note is not None and "user data" in note.group(1) and "1 SSH key(s)" in note.group(1)
    assert "s3cr3t" not in page
    # Filled in from the template, a host name given here overrides the template's seed field by field.
    response = post(admin_client, run_tasks, template="ci-tpl", prefilled_from="ci-tpl", ci_hostname="given-here")
    assert response.status_code == 302, response.content.decode()[:2000]
    files = read_seed(hv.pool_dir / "ci-admin-cidata.iso")[1]
    meta = yaml.safe_load(files["meta-data"])
    assert files["user-data"] == USER_DATA and meta["public-keys"] == [tkey] and meta["local-hostname"] == "given-here"


def test_the_maxima_reach_the_domain_and_a_template_fills_them_in(admin_client, vm_api, hv, run_tasks):
    assert post(admin_client, run_tasks, memory="1024", max_memory="4096", vcpus="1", max_vcpus="4").status_code == 302
    domain = parse_definition(hv.domain_xml("ci-admin"))
    assert (domain.memory_mib, domain.max_memory_mib, domain.vcpus, domain.max_vcpus) == (1024, 4096, 1, 4)
    template = {"name": "big", "memory": 512, "max_memory": 2048, "vcpus": 1, "max_vcpus": 2, "disks": [{"size": 1}]}
    assert vm_api.post("/api/v1/virtualmachines/templates", template, format="json").status_code == 201
    page = admin_client.get(ADD + "?template=big").content.decode()
    assert re.search(r'name="max_memory" value="2048"', page) and re.search(r'name="max_vcpus" value="2"', page)


def test_a_maximum_below_the_start_value_is_refused_on_its_field(admin_client, hv, run_tasks):
    response = post(admin_client, run_tasks, memory="2048", max_memory="1024")
    assert response.status_code == 200 and field_errors(response.content.decode(), "max_memory")
    assert not VirtualMachine.objects.exists() and hv.list_domain_names() == []
