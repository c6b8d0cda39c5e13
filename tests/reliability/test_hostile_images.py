"""Hostile disk images offered as an existing disk, a clone source and an ISO.

Each image lies *inside* the allowed roots, so the path guard lets it through and
only the image checks stand between it and QEMU: a qcow2 whose backing file is a
host file, one whose backing file is a `json:` protocol name, one with an external
data file outside the roots, truncated qcow2s, and a VMDK descriptor naming a host
file. Offered as qcow2 (or as ISO) every one is refused with a 4xx naming the field.

A raw file holding a qcow2 header, and the VMDK descriptor, are valid *raw* disks:
offered as raw they are accepted, and the danger is QEMU probing them as what their
header says. There the proof is that the format stays raw everywhere (domain XML,
every qemu-img call has `-f raw`) and no qemu-img call names the host file.

Across all cases the host file's bytes appear in no response, no file Vapor wrote,
no log record and no database row.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.hostile import ISO_URL, Ground, database_dump, error_field, file_state, vm_payload
from tests.support.api import CREATE_URL
from tests.support.images import make_image, overwrite_start
from tests.vms import conftest as vm_fixtures
from vms.hypervisor.documents.domain import parse_domain
from vms.jobs import vm_provision
from vms.models import VirtualMachine

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "hostile images"
hv = vm_fixtures.hv
disk_root = vm_fixtures.disk_root


@dataclass
class Lab:
    ground: Ground
    disk_root: Path
    iso_root: Path
    secret: Path
    token: bytes
    images: dict[str, Path]  # what -> image inside the disk root (a copy sits in the ISO root under the same name)
    bodies: list[bytes] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)  # every qemu-img invocation


def build_images(root: Path, host: Path, secret: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    images["qcow2 backed by a host file"] = make_image(root / "backing-host.qcow2", "1M", "qcow2", "-b", str(secret), "-F", "raw")
    name = f'json:{{"driver":"raw","file":{{"driver":"file","filename":"{secret}"}}}}'
    images["qcow2 backed by a json: name"] = make_image(root / "backing-json.qcow2", "1M", "qcow2", "-u", "-b", name, "-F", "raw")
    images["qcow2 backed by nbd:"] = make_image(root / "backing-nbd.qcow2", "1M", "qcow2", "-u", "-b", "nbd:127.0.0.1:1", "-F", "raw")
    relative = "../" * 12 + str(secret).lstrip("/")
    images["qcow2 backed by a relative ../ name"] = make_image(root / "backing-rel.qcow2", "1M", "qcow2", "-u", "-b", relative, "-F", "raw")
    data = host / "data.raw"
    images["qcow2 with an external data file outside"] = make_image(root / "datafile.qcow2", "1M", "qcow2", "-o", f"data_file={data}")
    data.write_bytes(secret.read_bytes())  # the data file now holds host bytes
    fifo = root / "data.fifo"
    images["qcow2 whose data file is a FIFO inside the roots"] = make_image(
        root / "datafile-fifo.qcow2", "1M", "qcow2", "-o", f"data_file={fifo}"
    )
    fifo.unlink()
    os.mkfifo(fifo)  # QEMU would read a pipe as the disk's data
    for size in (100, 4096, 65536):
        image = make_image(root / f"truncated-{size}.qcow2", "64M")
        with image.open("r+b") as handle:
            handle.truncate(size)
        images[f"qcow2 truncated to {size} bytes"] = image
    header = root / "raw-with-qcow2-header.img"
    header.write_bytes(images["qcow2 backed by a host file"].read_bytes())
    images["raw file holding a qcow2 header"] = header
    vmdk = root / "descriptor.vmdk"
    vmdk.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        f'RW 2048 FLAT "{secret}" 0\nddb.adapterType = "ide"\n'
    )
    images["VMDK descriptor naming a host file"] = vmdk
    return images


@pytest.fixture
def lab(hv, disk_root, iso_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    host = tmp_path / "host-files"
    host.mkdir()
    token = f"VAPOR-HOST-SECRET-{uuid.uuid4().hex}".encode()
    secret = host / "secret.raw"
    secret.write_bytes((token + b"\n") * (1024 * 1024 // (len(token) + 1)))
    images = build_images(disk_root, host, secret)
    for image in images.values():
        (iso_dirs.extra_root / image.name).write_bytes(image.read_bytes())
    ground = Ground(hv, [disk_root, hv.pool_dir, *iso_dirs.search, iso_dirs.download, iso_dirs.extra_root, host])
    lab = Lab(ground, disk_root, iso_dirs.extra_root, secret, token, images)
    real_run = subprocess.run

    def spy(command: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(command, list) and command and command[0] == "qemu-img":
            lab.commands.append([str(part) for part in command])
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    yield lab


QCOW2_SLOTS = {
    "disks.0.path": lambda p: vm_payload(disks=[{"path": str(p)}]),
    "disks.0.clone_from": lambda p: vm_payload(disks=[{"clone_from": str(p)}]),
}


def offer(lab: Lab, client: Any, run_tasks: Any, url: str, payload: dict[str, Any]) -> Any:
    with run_tasks():
        response = client.post(url, payload, format="json")
    lab.bodies.append(response.content)
    return response


def refused_case(lab: Lab, tally: Any, case: str, expected_field: str, send: tuple[Any, Any, str, dict[str, Any]]) -> None:
    before = lab.ground.snapshot()
    response = offer(lab, *send)
    leftovers, left = lab.ground.leftovers(before)
    named = error_field(response)
    refused = 400 <= response.status_code < 500 and named == expected_field
    tally.record(SUITE, case, refused=refused, leftovers=leftovers, detail=f"{response.status_code} field={named or '-'} {left}".strip())
    assert refused, (case, response.status_code, response.content[:400])
    assert leftovers == 0, (case, left)


def assert_secret_nowhere(lab: Lab, caplog: pytest.LogCaptureFixture, tally: Any, hv: Any) -> None:
    places = {
        "responses": b"\n".join(lab.bodies),
        "logs": caplog.text.encode(),
        "database": database_dump().encode(),
        "domain XML": "\n".join(d.xml for d in hv.domains.values()).encode(),
    }
    for path in file_state([hv.pool_dir, lab.disk_root, lab.iso_root]):
        if Path(path).is_file() and not Path(path).is_symlink() and path != str(lab.secret):
            places[path] = Path(path).read_bytes()
    found = sorted(where for where, data in places.items() if lab.token in data)
    tally.record(SUITE, "host file's bytes in responses, logs, database, domain XML and files", refused=not found, leftovers=len(found))
    assert found == []


def test_hostile_images_are_refused_as_qcow2_and_as_isos(lab: Lab, hv, vm_api, run_tasks, tally, caplog) -> None:
    for what, image in lab.images.items():
        for slot, payload in QCOW2_SLOTS.items():
            refused_case(lab, tally, f"{slot}: {what}", slot, (vm_api, run_tasks, CREATE_URL, payload(image)))
        iso_copy = str(lab.iso_root / image.name)
        refused_case(lab, tally, f"ISO path: {what}", "path", (vm_api, run_tasks, ISO_URL, {"path": iso_copy}))
        iso_ref = vm_payload(disks=[{"size": 1}], iso_path=iso_copy)
        refused_case(lab, tally, f"iso_path: {what}", "iso_path", (vm_api, run_tasks, CREATE_URL, iso_ref))
    vmdk = str(lab.images["VMDK descriptor naming a host file"])
    for slot, disk in (
        ("disks.0.format", {"path": vmdk, "format": "vmdk"}),
        ("disks.0.source_format", {"clone_from": vmdk, "source_format": "vmdk"}),
    ):
        refused_case(lab, tally, f"{slot}: vmdk", slot, (vm_api, run_tasks, CREATE_URL, vm_payload(disks=[disk])))
    named = [c for c in lab.commands if str(lab.secret) in " ".join(c)]
    tally.record(SUITE, "qemu-img calls naming the host file", refused=not named, leftovers=len(named), detail=f"{len(lab.commands)} calls")
    assert named == []
    assert_secret_nowhere(lab, caplog, tally, hv)


@pytest.mark.parametrize("what", ["raw file holding a qcow2 header", "VMDK descriptor naming a host file"])
@pytest.mark.parametrize("slot", ["path", "clone_from"])
def test_a_header_inside_a_raw_disk_stays_data(lab: Lab, hv, vm_api, run_tasks, tally, caplog, what: str, slot: str) -> None:
    image = lab.images[what]
    original = image.read_bytes()
    disk = {"path": str(image), "format": "raw"} if slot == "path" else {"clone_from": str(image), "source_format": "raw", "format": "raw"}
    response = offer(lab, vm_api, run_tasks, CREATE_URL, vm_payload(name="rawvm", disks=[disk]))
    assert response.status_code == 202, response.content
    live = parse_domain(hv.domains["rawvm"].xml)
    formats = [d.format for d in live.disks]
    info_formats = [c[c.index("-f") + 1] for c in lab.commands if "-f" in c]
    named = [c for c in lab.commands if str(lab.secret) in " ".join(c)]
    inert = formats == ["raw"] and set(info_formats) == {"raw"} and named == [] and image.read_bytes() == original
    tally.record(
        SUITE,
        f"{slot} as raw: {what} (never read as qcow2/vmdk)",
        refused=inert,
        leftovers=len(named),
        detail=f"accepted as raw; domain formats {formats}; qemu-img -f {sorted(set(info_formats))}; naming the host file: {len(named)}",
    )
    assert formats == ["raw"]
    assert set(info_formats) == {"raw"}, lab.commands
    assert named == []
    assert image.read_bytes() == original
    assert_secret_nowhere(lab, caplog, tally, hv)


REWRITTEN = {
    # slot -> the disk as requested, and the step the worker must fail at
    "clone_from": (lambda p: {"clone_from": str(p), "source_format": "qcow2"}, "clone"),
    "linked clone_from": (lambda p: {"clone_from": str(p), "source_format": "qcow2", "linked": True}, "linked clone"),
    "path": (lambda p: {"path": str(p), "format": "qcow2"}, "define domain"),
}


@pytest.mark.parametrize("slot", list(REWRITTEN))
@pytest.mark.parametrize(
    "what", ["qcow2 backed by a host file", "qcow2 with an external data file outside", "qcow2 backed by a json: name"]
)
def test_a_header_rewritten_between_request_and_worker_fails_the_vm(
    lab: Lab, hv, vm_api, tally, caplog, tmp_path: Path, slot: str, what: str
):
    """A guest writing a raw disk rewrites its header after the request was checked: the worker checks again."""
    disk = lab.disk_root / f"guest-written-{uuid.uuid4().hex[:6]}.img"
    disk.write_bytes(make_image(tmp_path / "harmless.qcow2", "1M").read_bytes())
    request, step = REWRITTEN[slot]
    response = vm_api.post(CREATE_URL, vm_payload(name="rewritten", disks=[{"size": 1}, request(disk)]), format="json")
    lab.bodies.append(response.content)
    assert response.status_code == 202, response.content
    overwrite_start(disk, lab.images[what])
    before = lab.ground.snapshot()
    before.rows = {**before.rows, "vm": before.rows["vm"] - 1, "disk": before.rows["disk"] - 2}  # the accepted request's rows
    vm_provision(vm_id=response.json()["id"])
    vm = VirtualMachine.objects.get(name="rewritten")
    failed_there = vm.status == "failed" and vm.error.startswith(step)
    vm.delete()  # a failed VM's rows stay, on purpose, until it is deleted
    before.calls = lab.ground.snapshot().calls  # volumes made and undone are calls, not leftovers
    leftovers, left = lab.ground.leftovers(before)
    words = vm.error.replace(str(lab.disk_root), "<disk root>").replace(str(lab.secret.parent), "<host dir>")[:160]
    tally.record(SUITE, f"worker re-check, {slot}: rewritten to a {what}", refused=failed_there, leftovers=leftovers, detail=words)
    assert failed_there, vm.error
    assert leftovers == 0, left
    assert_secret_nowhere(lab, caplog, tally, hv)
