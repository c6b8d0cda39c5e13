"""20 simultaneous create-enhanced calls with one name, on PostgreSQL and the real daemon."""

from __future__ import annotations

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import CREATE_URL
from tests.support.factories import UserFactory
from tests.support.projects import join
from tests.support.threads import in_threads
from vms.models import VirtualMachine

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_twenty_parallel_creates_with_one_name_make_one_vm(vm_env: VmEnv, settings):
    assert connection.vendor == "postgresql"
    from django_q.conf import Conf

    Conf.SYNC = True
    user = UserFactory.create(username="racer", apps=["vms"])
    join(user, "operator")
    payload = {"name": "race", "memory": 256, "vcpus": 1, "disks": [{"size": 1}], "graphics": {"type": "none"}, "storage_pool": vm_env.pool}
    codes: list[int] = []

    def call(_: int) -> None:
        client = APIClient()
        client.force_authenticate(user)
        codes.append(client.post(CREATE_URL, payload, format="json").status_code)

    assert in_threads(20, call) == []
    assert sorted(codes) == [202] + [409] * 19
    assert VirtualMachine.objects.filter(name="race").count() == 1
    assert VirtualMachine.objects.get(name="race").status == "running"
    assert virsh("list", "--all", "--name").stdout.split().count("race") == 1
    assert vm_env.volumes() == {"race-disk0.qcow2"}
