"""cloud-init against the real daemon: the seed uploaded through libvirt's stream, read by the guest, deleted with the VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.guest_vm import first_line, vapor_guest
from tests.integration.vm_support import VmEnv
from tests.support.sshkeys import ed25519_key, fingerprint, rsa_key
from vms.hypervisor.documents.domain import parse_domain
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db, pytest.mark.slow]


def test_the_guest_reads_its_cidata_seed_hostname_and_key_fingerprints(vm_api, run_tasks, vm_env: VmEnv, shell_iso: Path):
    keys = [ed25519_key("alice@cloudinit"), rsa_key()]
    guest = vapor_guest(
        vm_api,
        run_tasks,
        vm_env,
        shell_iso,
        name="cloudinit-guest",
        cloud_init={"hostname": "cloudinit-host.example", "ssh_authorized_keys": keys, "user_data": "#cloud-config\n{}\n"},
    )
    try:
        log = guest.log_text()
        assert first_line(log, r"^CLOUD-INIT hostname=(\S+)").group(1) == "cloudinit-host.example"
        shown = [line.split("=", 1)[1].strip() for line in log.splitlines() if line.startswith("CLOUD-INIT key=")]
        assert shown == [fingerprint(k) for k in keys]
        hv = LibvirtDriver("qemu:///system")
        seed = hv.volume(vm_env.pool, "cloudinit-guest-cidata.iso")
        assert seed.path == str(vm_env.pool_dir / "cloudinit-guest-cidata.iso") and seed.capacity > 0
        assert Path(seed.path).read_bytes()[32808:32814] == b"cidata"
        cdroms = [d for d in parse_domain(hv.domain_xml("cloudinit-guest")).disks if d.device == "cdrom"]
        assert [(d.source, d.bus, d.readonly, d.format) for d in cdroms][-1] == (seed.path, "sata", True, "raw")
    finally:
        guest.close()
    assert vm_api.delete(f"/api/v1/virtualmachines/{guest.vm.pk}").status_code == 204
    assert not (vm_env.pool_dir / "cloudinit-guest-cidata.iso").exists()


def test_an_upload_into_a_taken_name_fails_and_leaves_the_volume_alone(vm_env: VmEnv):
    hv = LibvirtDriver("qemu:///system")
    hv.upload_volume(vm_env.pool, "cloudinit-taken.iso", b"first" * 1000)
    from vaporsite.errors import Conflict

    with pytest.raises(Conflict):
        hv.upload_volume(vm_env.pool, "cloudinit-taken.iso", b"second")
    assert (vm_env.pool_dir / "cloudinit-taken.iso").read_bytes() == b"first" * 1000
    hv.delete_volume(vm_env.pool, "cloudinit-taken.iso")
