"""Queueing the provisioning task with django-q2 asynchronous (no cluster), as a deployed web process does.

The ORM broker calls Django's close_old_connections() when it finds the connection in autocommit mode; with
CONN_MAX_AGE=0 that closes the request's connection in the middle of the request, and the rest of it opens a new
one (about 15 ms on PostgreSQL, measured by bench.api_bench). The task must be queued without that, once, and only
after the VM's rows are committed. Transactional tests: the usual per-test transaction would hide autocommit.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from tests.support.api import CREATE_URL
from vms.models import VirtualMachine


@pytest.fixture
def asynchronous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Conf, "SYNC", False)


@pytest.mark.django_db(transaction=True)
def test_the_task_is_queued_once_without_closing_the_connection(vm_api, hv, asynchronous, monkeypatch):
    closes: list[str] = []
    import django.db

    real_close = django.db.close_old_connections

    def spy(**kwargs: object) -> None:
        closes.append("close_old_connections")
        real_close(**kwargs)

    monkeypatch.setattr(django.db, "close_old_connections", spy)

    response = vm_api.post(CREATE_URL, {"name": "queued", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]}, format="json")

    assert response.status_code == 202, response.json()
    assert closes == []
    vm = VirtualMachine.objects.get(name="queued")
    assert vm.status == "provisioning"  # queued, not run: no cluster
    [queued] = OrmQ.objects.all()
    task = SignedPackage.loads(queued.payload)
    assert task["func"] == "vms.tasks.provision_vm" and task["args"] == (vm.pk,)
    # The main queue, never the downloads' one (issue 11): a slow download cannot hold provisioning up.
    assert queued.key == settings.Q_CLUSTER["name"] != settings.DOWNLOAD_QUEUE


@pytest.mark.django_db(transaction=True)
def test_a_refused_request_queues_nothing(vm_api, hv, asynchronous):
    response = vm_api.post(CREATE_URL, {"name": "bad name!", "memory": 512, "vcpus": 1}, format="json")
    assert response.status_code == 400
    assert not OrmQ.objects.exists() and not VirtualMachine.objects.exists()
