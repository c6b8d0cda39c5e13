"""A dead host with the real driver (no daemon needed): the default host on libvirt's in-process test driver,
another host that accepts TCP connections and never answers (a hung daemon). The state refresh marks the dead
host's VM unknown and the other host's VM running; within VAPOR_HOST_RETRY_AFTER the dead host is not dialled
again (libvirt.open is not called: the refresh and requests about the other host do not wait on it). A host
that refuses at once is dialled again each time instead (tests/vms/test_kept_connections.py)."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections import Counter
from collections.abc import Iterator

import libvirt
import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from projects.access import SYSTEM
from tests.support.factories import VirtualMachineFactory
from vms.host_models import Host
from vms.models import VirtualMachine, VmEvent
from vms.services.hosts import host_check, hosts_check
from vms.services.states import vm_refresh_states

pytestmark = pytest.mark.django_db


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections the kernel accepts and nobody ever answers; closed at the end, which ends
    the bounded open's thread still waiting on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_a_dead_host_is_not_dialled_again_within_the_retry_window(settings, monkeypatch, django_user_model, silent_port):
    settings.VAPOR = dataclasses.replace(
        django_settings.VAPOR, libvirt_uri="test:///default", host_retry_after=60.0, host_connect_timeout=0.5
    )
    dead_uri = f"qemu+tcp://127.0.0.1:{silent_port}/system"
    dead = Host.objects.create(name="dead", uri=dead_uri)
    VirtualMachineFactory.create(name="test", status="stopped")  # the test driver's own running domain, on the default host
    VirtualMachineFactory.create(name="far", status="running", host=dead)
    opened: Counter[str] = Counter()
    real_open = libvirt.open

    def counting_open(uri: str | None = None) -> libvirt.virConnect:
        opened[uri or ""] += 1
        return real_open(uri)

    monkeypatch.setattr(libvirt, "open", counting_open)

    assert vm_refresh_states() == 1
    assert dict(VirtualMachine.objects.values_list("name", "status")) == {"test": "running", "far": "unknown"}
    assert opened[dead_uri] == 1
    event = VmEvent.objects.get(vm__name="far", step="host down")
    assert event.message.startswith(f"host down: cannot connect to {dead_uri}")

    started = time.monotonic()
    assert vm_refresh_states() == 1
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("root", password=None))
    near = VirtualMachine.objects.get(name="test")
    assert client.get(f"/api/v1/virtualmachines/{near.pk}").json()["status"] == "running"
    far = VirtualMachine.objects.get(name="far")
    refused = client.post(f"/api/v1/virtualmachines/{far.pk}/start")
    assert (refused.status_code, refused.json()["code"]) == (409, "host_down")
    assert "not retried for another" in refused.json()["detail"]
    assert time.monotonic() - started < 1.5
    assert opened[dead_uri] == 1  # within the retry window: never dialled again
    assert VmEvent.objects.filter(step="host down").count() == 1


def test_check_now_dials_a_dead_host_again_within_the_window(settings, monkeypatch, silent_port):
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, host_retry_after=60.0, host_connect_timeout=0.5)
    dead_uri = f"qemu+tcp://127.0.0.1:{silent_port}/system"
    dead = Host.objects.create(name="dead", uri=dead_uri)
    opened: Counter[str] = Counter()
    real_open = libvirt.open

    def counting_open(uri: str | None = None) -> libvirt.virConnect:
        opened[uri or ""] += 1
        return real_open(uri)

    monkeypatch.setattr(libvirt, "open", counting_open)
    hosts_check(hosts=[dead])
    hosts_check(hosts=[dead])  # the schedule within the window: not dialled again
    assert opened[dead_uri] == 1
    host_check(host=dead, actor=SYSTEM)  # an operator's Check now: dialled again
    assert opened[dead_uri] == 2
    assert Host.objects.get(name="dead").health == "down"
