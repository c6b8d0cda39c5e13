"""The hostile-image suite against a remote host (issue 15, point 4).

The same images (tests/reliability/test_hostile_images.py) lie in a storage pool of a remote host, so the
path guard (a volume of one of the host's pools) lets them through and only the checks made through the
host's libvirt stand between them and QEMU (`vms.services.remote_images`: headers read with the storage
API's stream download). Offered as an existing qcow2 disk every one is refused with a 4xx naming the field,
nothing is left behind, no qemu-img runs on the portal, and the host file's bytes appear nowhere.
"""

from __future__ import annotations

import pytest

from tests.reliability import test_hostile_images as suite
from tests.reliability.hostile import vm_payload
from tests.support.api import CREATE_URL
from vms.models import Host

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "hostile images, remote host"
REMOTE = "qemu+tcp://10.99.1.2/system"
hv = suite.hv
disk_root = suite.disk_root
lab = suite.lab


@pytest.fixture
def remote_lab(lab: suite.Lab, hv) -> suite.Lab:
    """The fake answers for every URI; the default host's URI makes it remote, the disk root one of its pools."""
    hv.pools["shared"] = lab.disk_root
    Host.objects.update_or_create(name="default", defaults={"uri": REMOTE})
    return lab


def test_hostile_images_are_refused_as_existing_disks_on_a_remote_host(remote_lab: suite.Lab, hv, vm_api, run_tasks, tally, caplog):
    monkey = pytest.MonkeyPatch()
    monkey.setattr(suite, "SUITE", SUITE)
    try:
        for what, image in remote_lab.images.items():
            payload = vm_payload(disks=[{"path": str(image)}])
            suite.refused_case(remote_lab, tally, f"remote disks.0.path: {what}", "disks.0.path", (vm_api, run_tasks, CREATE_URL, payload))
        vmdk = str(remote_lab.images["VMDK descriptor naming a host file"])
        payload = vm_payload(disks=[{"path": vmdk, "format": "vmdk"}])
        suite.refused_case(remote_lab, tally, "remote disks.0.format: vmdk", "disks.0.format", (vm_api, run_tasks, CREATE_URL, payload))
        tally.record(SUITE, "qemu-img calls on the portal", refused=not remote_lab.commands, leftovers=len(remote_lab.commands))
        assert remote_lab.commands == []  # everything was read through the host's libvirt
        assert hv.calls["read_volume"] > 0
        suite.assert_secret_nowhere(remote_lab, caplog, tally, hv)
    finally:
        monkey.undo()


@pytest.mark.parametrize("what", ["raw file holding a qcow2 header", "VMDK descriptor naming a host file"])
def test_a_header_inside_a_raw_disk_stays_data_on_a_remote_host(remote_lab: suite.Lab, hv, vm_api, run_tasks, what: str):
    image = remote_lab.images[what]
    response = suite.offer(remote_lab, vm_api, run_tasks, CREATE_URL, vm_payload(disks=[{"path": str(image), "format": "raw"}]))
    assert response.status_code == 202, response.content[:400]
    from vms.models import VirtualMachine

    vm = VirtualMachine.objects.get()
    assert vm.status == "running", vm.error
    assert vm.disks.get().source_chain == [{"path": str(image), "format": "raw", "data_file": None}]
    assert remote_lab.commands == []
