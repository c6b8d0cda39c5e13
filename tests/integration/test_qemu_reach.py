"""Against the real daemon: an ISO in a directory QEMU's user cannot search (issue 11, the 0700 row).

Before: 202, then the VM failed at start with QEMU's "Permission denied"
(reproduced here with the check turned off). Now: 400 on `iso_path` naming
the directory. Made searchable (0711), the same ISO boots.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from django.conf import settings as django_settings

from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from tests.support.isos import make_iso
from vaporsite.paths import identity
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]


def test_the_default_qemu_user_is_the_one_the_daemon_runs_qemu_as(settings):
    label = re.search(r"<model>dac</model>.*?<baselabel type='kvm'>\+(\d+):\+(\d+)</baselabel>", virsh("capabilities").stdout, re.S)
    assert label is not None
    who = identity(settings.VAPOR.qemu_user)
    assert settings.VAPOR.qemu_user == "libvirt-qemu" and who is not None
    assert (who.uid, int(label.group(2)) in who.groups) == (int(label.group(1)), True)


def test_an_iso_in_a_0700_directory_is_refused_at_request_time(vm_api, run_tasks, vm_env: VmEnv, settings):
    private = vm_env.isos / "home"
    private.mkdir(mode=0o700)
    iso = make_iso(private / "installer.iso")
    iso.chmod(0o644)
    quiet = {"memory": 256, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": vm_env.pool, "iso_path": str(iso)}

    checked = settings.VAPOR
    settings.VAPOR = dataclasses.replace(checked, qemu_user="")  # as before the check
    response = post_create(vm_api, run_tasks, {"name": "it-reach-before", **quiet})
    assert response.status_code == 202, response.json()
    before = VirtualMachine.objects.get(name="it-reach-before")
    assert before.status == "failed" and "Permission denied" in before.error, before.error
    assert vm_api.delete(f"/api/v1/virtualmachines/{before.pk}").status_code == 204

    settings.VAPOR = checked
    assert checked.qemu_user == django_settings.VAPOR.qemu_user == "libvirt-qemu"
    response = post_create(vm_api, run_tasks, {"name": "it-reach-refused", **quiet})
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == "iso_path" and response.json()["code"] == "path_not_searchable"
    assert f"QEMU runs as libvirt-qemu, which cannot search the directory {private} (mode 0700)" in response.json()["detail"]
    assert not VirtualMachine.objects.filter(name="it-reach-refused").exists()
    assert virsh("dominfo", "it-reach-refused", check=False).returncode != 0

    private.chmod(0o711)
    response = post_create(vm_api, run_tasks, {"name": "it-reach-ok", **quiet})
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="it-reach-ok")
    assert vm.status == "running", vm.error
