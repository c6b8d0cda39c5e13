"""cloud-init (NoCloud) against the in-memory hypervisor: the seed ISO, its CD-ROM, the checks, templates, delete."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from projects.choices import Role
from projects.models import AuditEntry, Membership, default_project_pk
from tests.support.api import post_create
from tests.support.sshkeys import ecdsa_key, ed25519_key, fingerprint, rsa_key
from vaporsite.errors import HypervisorError, InvalidInput
from vms.cloud_init_models import SshPublicKey, VmCloudInit
from vms.hypervisor.documents.domain import parse_domain
from vms.models import VirtualMachine, VmEvent
from vms.services.cloud_init import check_hostname, default_hostname
from vms.services.ssh_keys import parse_public_key

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-Passw0rd-never-shown"
USER_DATA = f"#cloud-config\npassword: {SECRET}\nchpasswd: {{expire: false}}\n"


def read_seed(path: Path) -> tuple[str, dict[str, str]]:
    """The seed's volume label and its files by their Rock Ridge names."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    label = iso.pvd.volume_identifier.decode().strip()
    files = {}
    for name in ("user-data", "meta-data", "network-config"):
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        files[name] = out.getvalue().decode()
    iso.close()
    return label, files


def payload(name: str = "ci-vm", **cloud_init: object) -> dict[str, object]:
    return {"name": name, "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "cloud_init": cloud_init}


# --- SSH keys and host names ---------------------------------------------------------------


@pytest.mark.parametrize("make", [ed25519_key, rsa_key, ecdsa_key])
def test_openssh_keys_parse_with_ssh_keygens_fingerprint(make, tmp_path):
    line = make()
    key = parse_public_key(line, field="k")
    assert key.fingerprint == fingerprint(line)
    (tmp_path / "k.pub").write_text(line + "\n")
    shown = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True).stdout
    assert shown.split()[1] == key.fingerprint


def test_a_key_whose_data_holds_another_type_is_refused():
    ed = ed25519_key().split()
    with pytest.raises(InvalidInput, match="holds 'ssh-ed25519', not ssh-rsa") as caught:
        parse_public_key(f"ssh-rsa {ed[1]}", field="cloud_init.ssh_authorized_keys[0]")
    assert caught.value.field == "cloud_init.ssh_authorized_keys[0]"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("ssh-ed25519", "base64 part is missing"),
        ("ssh-dsa AAAA", "unknown key type"),
        ("ssh-ed25519 not*base64", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==", "not a valid ssh-ed25519 public key"),
        ("", "one line"),
    ],
)
def test_malformed_keys_are_refused(line, words):
    with pytest.raises(InvalidInput, match=words):
        parse_public_key(line, field="key")


def test_a_short_rsa_key_is_refused():
    with pytest.raises(InvalidInput, match="at least 2048 bits"):
        parse_public_key(rsa_key(1024), field="key")


@pytest.mark.parametrize("name", ["web-1", "a.example.org", "x" * 63, "1host"])
def test_rfc1123_host_names_pass(name):
    check_hostname(name)


@pytest.mark.parametrize("name", ["-web", "web-", "we_b", "a..b", "x" * 64, "a." * 127 + "ab", "", "host."])
def test_other_host_names_are_refused(name):
    with pytest.raises(InvalidInput) as caught:
        check_hostname(name)
    assert caught.value.field == "cloud_init.hostname"


def test_the_default_host_name_is_the_vm_name_made_valid():
    assert default_hostname("web_01") == "web-01"
    assert default_hostname("db.example") == "db.example"
    assert default_hostname("_x_") == "x"


# --- create-enhanced ---------------------------------------------------------------------


def test_create_builds_the_cidata_seed_and_attaches_it_read_only(vm_api, hv, run_tasks, caplog):
    key = ed25519_key()
    caplog.set_level(logging.DEBUG)
    response = post_create(
        vm_api,
        run_tasks,
        payload(user_data=USER_DATA, ssh_authorized_keys=[key], network_config={"version": 2, "ethernets": {}}, meta_data="zone: a\n"),
    )
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get()
    assert vm.status == "running", vm.error
    seed = hv.pool_dir / "ci-vm-cidata.iso"
    label, files = read_seed(seed)
    assert label == "cidata"
    assert files["user-data"] == USER_DATA
    meta = yaml.safe_load(files["meta-data"])
    assert meta["local-hostname"] == "ci-vm" and meta["public-keys"] == [key] and meta["zone"] == "a"
    assert meta["instance-id"] == f"vapor-{vm.uuid}"
    assert yaml.safe_load(files["network-config"]) == {"version": 2, "ethernets": {}}
    cdroms = [d for d in parse_domain(hv.domains["ci-vm"].xml).disks if d.device == "cdrom"]
    assert [(d.source, d.target_dev, d.bus, d.readonly, d.format) for d in cdroms] == [(str(seed), "sda", "sata", True, "raw")]
    assert "create cloud-init seed ci-vm-cidata.iso" in [e.step for e in vm.events.all()]
    # user_data is a secret: in no log record, event or audit entry, and stored encrypted
    assert SECRET not in caplog.text
    assert not VmEvent.objects.filter(message__contains=SECRET).exists()
    assert not AuditEntry.objects.filter(detail__contains=SECRET).exists()
    assert SECRET not in VmCloudInit.objects.get().user_data_encrypted


def test_the_seed_cdrom_comes_after_the_isos(vm_api, hv, run_tasks, iso_dirs):
    from tests.support.isos import make_iso, register_ready

    iso = register_ready(make_iso(iso_dirs.search[0] / "installer.iso"))
    response = post_create(vm_api, run_tasks, {**payload(hostname="h1"), "iso_path": iso.pk})
    assert response.status_code == 202, response.json()
    cdroms = [d for d in parse_domain(hv.domains["ci-vm"].xml).disks if d.device == "cdrom"]
    assert [d.target_dev for d in cdroms] == ["sda", "sdb"]
    assert cdroms[1].source.endswith("ci-vm-cidata.iso")


def test_the_dry_run_shows_the_seed_and_leaves_nothing(vm_api, hv, run_tasks):
    response = post_create(vm_api, run_tasks, payload(user_data=USER_DATA), url="/api/v1/virtualmachines/create-enhanced?dry_run=1")
    assert response.status_code == 200, response.json()
    assert "create cloud-init seed ci-vm-cidata.iso" in response.json()["plan"]
    assert "ci-vm-cidata.iso" in response.json()["domain_xml"]
    assert SECRET not in str(response.json())
    assert not VirtualMachine.objects.exists() and not VmCloudInit.objects.exists() and list(hv.pool_dir.iterdir()) == []


def test_bad_yaml_is_a_400_on_user_data_with_line_and_column_and_no_text(vm_api, hv, run_tasks):
    bad = f"#cloud-config\nusers:\n  - name: bob\n    passwd: {SECRET}\n   bad: [\n"
    response = post_create(vm_api, run_tasks, payload(user_data=bad))
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "cloud_init.user_data"
    assert body["line"] == 5 and "line 5" in body["detail"] and body["column"] == 4
    assert SECRET not in str(body)
    assert not VirtualMachine.objects.exists() and list(hv.pool_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("cloud_init", "field"),
    [
        ({"user_data": "hello"}, "cloud_init.user_data"),
        ({"user_data": "#cloud-config\n- a list\n"}, "cloud_init.user_data"),
        ({"hostname": "bad_host"}, "cloud_init.hostname"),
        ({"network_config": "ethernets: {}\n"}, "cloud_init.network_config"),
        ({"meta_data": "- not a mapping\n"}, "cloud_init.meta_data"),
    ],
)
def test_each_field_is_checked(vm_api, hv, run_tasks, cloud_init, field):
    response = post_create(vm_api, run_tasks, payload(**cloud_init))
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == field
    assert not VirtualMachine.objects.exists() and list(hv.pool_dir.iterdir()) == []


def test_a_script_is_accepted_as_user_data(vm_api, hv, run_tasks):
    response = post_create(vm_api, run_tasks, payload(user_data="#!/bin/sh\necho hi\n"))
    assert response.status_code == 202, response.json()


def test_a_bad_key_is_a_400_naming_its_index(vm_api, hv, run_tasks):
    ed = ed25519_key().split()
    response = post_create(vm_api, run_tasks, payload(ssh_authorized_keys=[ed25519_key(), f"ssh-rsa {ed[1]}"]))
    assert response.status_code == 400
    assert response.json()["field"] == "cloud_init.ssh_authorized_keys[1]"
    assert not VirtualMachine.objects.exists() and list(hv.pool_dir.iterdir()) == []


def test_without_keys_the_requesters_profile_keys_are_used(vm_api, hv, run_tasks):
    user = User.objects.get(username="vmop")
    mine = ed25519_key("mine")
    SshPublicKey.objects.create(user=user, name="laptop", key=mine, fingerprint=fingerprint(mine))
    other = User.objects.create_user("someone")
    theirs = ed25519_key("theirs")
    SshPublicKey.objects.create(user=other, name="laptop", key=theirs, fingerprint=fingerprint(theirs))
    response = post_create(vm_api, run_tasks, payload(hostname="box"))
    assert response.status_code == 202, response.json()
    meta = yaml.safe_load(read_seed(hv.pool_dir / "ci-vm-cidata.iso")[1]["meta-data"])
    assert meta["public-keys"] == [mine] and meta["local-hostname"] == "box"


def test_a_failed_provisioning_removes_the_seed(vm_api, hv, run_tasks):
    hv.fail["define_domain"] = HypervisorError("refused")
    response = post_create(vm_api, run_tasks, payload(user_data=USER_DATA))
    assert response.status_code == 202
    assert VirtualMachine.objects.get().status == "failed"
    assert list(hv.pool_dir.iterdir()) == []


def test_a_failed_upload_leaves_nothing(vm_api, hv, run_tasks):
    hv.fail["upload_volume"] = HypervisorError("pool full")
    response = post_create(vm_api, run_tasks, payload())
    assert response.status_code == 202
    vm = VirtualMachine.objects.get()
    assert vm.status == "failed" and "create cloud-init seed" in vm.error
    assert list(hv.pool_dir.iterdir()) == [] and hv.domains == {}


@pytest.mark.parametrize("keep", ["", "?keep_disks=true"])
def test_the_seed_is_deleted_with_the_vm(vm_api, hv, run_tasks, keep):
    response = post_create(vm_api, run_tasks, payload())
    vm_id = response.json()["id"]
    assert (hv.pool_dir / "ci-vm-cidata.iso").exists()
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm_id}{keep}").status_code == 204
    assert not (hv.pool_dir / "ci-vm-cidata.iso").exists()


def test_user_data_is_shown_only_to_those_who_may_change_the_vm(vm_api, hv, run_tasks):
    vm_id = post_create(vm_api, run_tasks, payload(user_data=USER_DATA)).json()["id"]
    mine = vm_api.get(f"/api/v1/virtualmachines/{vm_id}").json()["cloud_init"]
    assert mine["user_data"] == USER_DATA and mine["user_data_set"] is True and mine["seed_volume"] == "ci-vm-cidata.iso"
    viewer = User.objects.create_user("ci-viewer")
    from django.contrib.auth.models import Permission

    viewer.user_permissions.set(Permission.objects.filter(codename="view_virtualmachine"))
    Membership.objects.create(user=viewer, project_id=default_project_pk(), role=Role.VIEWER)
    client = APIClient()
    client.force_authenticate(viewer)
    response = client.get(f"/api/v1/virtualmachines/{vm_id}")
    assert response.status_code == 200
    theirs = response.json()["cloud_init"]
    assert "user_data" not in theirs and theirs["user_data_set"] is True
    assert SECRET not in response.content.decode()


# --- templates --------------------------------------------------------------------------


def test_template_defaults_are_overridden_field_by_field(vm_api, hv, run_tasks):
    tkey = ed25519_key("template")
    template = {
        "name": "ci-tpl",
        "memory": 512,
        "vcpus": 1,
        "disks": [{"size": 1}],
        "cloud_init": {"user_data": USER_DATA, "ssh_authorized_keys": [tkey], "meta_data": {"zone": "t"}},
    }
    created = vm_api.post("/api/v1/virtualmachines/templates", template, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["cloud_init"]["user_data"] == USER_DATA
    response = post_create(vm_api, run_tasks, {"name": "from-tpl", "template": "ci-tpl", "cloud_init": {"meta_data": {"zone": "r"}}})
    assert response.status_code == 202, response.json()
    files = read_seed(hv.pool_dir / "from-tpl-cidata.iso")[1]
    meta = yaml.safe_load(files["meta-data"])
    assert files["user-data"] == USER_DATA  # the template's
    assert meta["public-keys"] == [tkey] and meta["zone"] == "r" and meta["local-hostname"] == "from-tpl"


def test_a_template_checks_its_cloud_init(vm_api):
    bad = {"name": "ci-bad", "cloud_init": {"user_data": "#cloud-config\na: [\n"}}
    response = vm_api.post("/api/v1/virtualmachines/templates", bad, format="json")
    assert response.status_code == 400 and response.json()["field"] == "cloud_init.user_data"


def test_a_template_without_cloud_init_makes_vms_without_a_seed(vm_api, hv, run_tasks):
    assert vm_api.post("/api/v1/virtualmachines/templates", {"name": "plain", "disks": [{"size": 1}]}, format="json").status_code == 201
    response = post_create(vm_api, run_tasks, {"name": "plain-vm", "template": "plain"})
    assert response.status_code == 202
    assert not VmCloudInit.objects.exists() and [p.name for p in hv.pool_dir.iterdir()] == ["plain-vm-disk0.qcow2"]


def test_the_vm_page_shows_the_seed_and_user_data_only_to_operators(vm_api, hv, run_tasks):
    from django.test import Client

    from tests.reliability.authz import make_role

    key = ed25519_key("bob@laptop")
    vm_id = post_create(vm_api, run_tasks, payload(user_data=USER_DATA, ssh_authorized_keys=[key])).json()["id"]
    pages = {}
    for role in ("viewer", "operator"):
        client, user = Client(), make_role(role)
        assert user is not None
        client.force_login(user)
        response = client.get(f"/admin/vms/virtualmachine/{vm_id}/change/")
        assert response.status_code == 200
        pages[role] = response.content.decode()
    for page in pages.values():
        assert 'id="vapor-cloud-init"' in page and "ci-vm-cidata.iso" in page and fingerprint(key) in page
    assert SECRET in pages["operator"]
    assert SECRET not in pages["viewer"] and "only users who may change this VM see it" in pages["viewer"]


def test_a_template_with_defaults_gives_a_vm_made_in_the_admin_its_seed(vm_api, hv):
    from vms.services.lifecycle import vm_create
    from vms.services.requests import DiskRequest, VmRequest

    tkey = ed25519_key("template")
    template = {"name": "ci-tpl", "disks": [{"size": 1}], "cloud_init": {"ssh_authorized_keys": [tkey], "hostname": "from-template"}}
    assert vm_api.post("/api/v1/virtualmachines/templates", template, format="json").status_code == 201
    spelled_out = VmRequest(name="admin-made", memory=512, vcpus=1, disks=(DiskRequest(size=1),), template="ci-tpl", given=None)
    vm = vm_create(request=spelled_out, hv=hv)
    assert isinstance(vm, VirtualMachine)
    seed = VmCloudInit.objects.get(vm=vm)
    assert seed.ssh_authorized_keys == [tkey] and seed.hostname == "from-template"


def test_a_templates_user_data_is_hidden_from_its_viewers(vm_api):
    from tests.reliability.authz import make_role

    template = {"name": "ci-secret", "cloud_init": {"user_data": USER_DATA, "hostname": "h"}}
    assert vm_api.post("/api/v1/virtualmachines/templates", template, format="json").status_code == 201
    client, viewer = APIClient(), make_role("viewer")
    assert viewer is not None
    client.force_authenticate(viewer)
    for url in ("/api/v1/virtualmachines/templates", "/api/v1/virtualmachines/templates/ci-secret"):
        response = client.get(url)
        assert response.status_code == 200 and "ci-secret" in response.content.decode()
        assert SECRET not in response.content.decode() and '"user_data_set":true' in response.content.decode().replace(" ", "")
    assert vm_api.get("/api/v1/virtualmachines/templates/ci-secret").json()["cloud_init"]["user_data"] == USER_DATA
