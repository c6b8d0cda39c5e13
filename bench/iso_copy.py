"""Benchmark of a library ISO copied to a remote host (issue 15, point 5) against `virsh vol-upload` of the same file.

A measurement, not a test. The remote host is vh1 of scripts/hosts.sh (a libvirtd in its own network and mount
namespaces, reached over qemu+tcp); the file is `--mib` MiB of random bytes on this machine, registered as a
ready library ISO in a throwaway SQLite database. Each pair, in alternating order:

- Vapor: `vms.services.iso_copies.iso_on_host` for a host with no copy yet: the `vapor-isos` pool's volume
  made, the file streamed into it through libvirt's stream upload (the kept connection), read back on the host
  through the stream download and hashed, compared with the library's sha256, the row written;
- baseline: `virsh -c URI vol-create-as` then `virsh -c URI vol-upload` of the same file into the same pool: what an
  operator types to put a file into a remote pool, with no check of what arrived.

A third figure is Vapor's upload alone (`upload_volume_file`, no read-back), the same transfer as the
baseline's: it shows what the check on the host costs. Every copy is deleted before the next pair.

Run:  flock /tmp/vapor-libvirt.lock bash -c 'bash scripts/hosts.sh start 1 && .venv/bin/python -m bench.iso_copy [--write]'
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import Run, Section, Target, django_setup, machine_facts, migrate, require, say, targets_section

CAVEAT = "pass/fail tests: two libvirt daemons on this one VM (2 vCPUs), the remote one over TCP through a veth pair."
POOL = "vapor-isos"


def virsh(uri: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=timeout, check=False)
    require(done.returncode == 0, f"virsh {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def baseline_once(uri: str, path: Path, size: int) -> float:
    started = time.perf_counter()
    virsh(uri, "vol-create-as", POOL, "baseline.iso", str(size), "--format", "raw")
    virsh(uri, "vol-upload", "--pool", POOL, "baseline.iso", str(path))
    elapsed = time.perf_counter() - started
    virsh(uri, "vol-delete", "--pool", POOL, "baseline.iso")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("iso_copy", "ISO copy to a remote host", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--pairs", type=int, default=5, help="pairs of copies (default 5)")
    parser.add_argument("--mib", type=int, default=512, help="size of the file in MiB (default 512)")
    parser.add_argument("--quick", action="store_true", help="2 pairs of 32 MiB: a check that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.mib = 2, 32
    uri = subprocess.run(["bash", "scripts/hosts.sh", "uri", "vh1"], capture_output=True, text=True, check=False).stdout.strip()
    require(bool(uri), "no vh1: start the test hosts first (bash scripts/hosts.sh start 1)")
    virsh(uri, "list")
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-isocopy-", dir="/var/tmp"))
    try:
        django_setup(top)
        migrate("migrating a fresh SQLite database")
        import libvirt

        from isos.models import IsoImage
        from vms.hypervisor import get_hypervisor
        from vms.iso_copies import IsoHostCopy
        from vms.models import Host
        from vms.services.iso_copies import copy_volume_name, iso_on_host

        path = top / "bench.iso"
        digest = hashlib.sha256()
        with path.open("wb") as sink:
            for _ in range(args.mib):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                sink.write(chunk)
        size = path.stat().st_size
        iso = IsoImage.objects.create(id="iso-0123456789ab", name="bench.iso", path=str(path), size=size, sha256_hash=digest.hexdigest())
        host = Host.objects.create(name="vh1", uri=uri)
        hv = get_hypervisor(uri)
        iso_on_host(iso=iso, host=host, hv=hv)  # warm: the pool made, the connection open, the file in the page cache
        name = copy_volume_name(iso.pk)

        def forget_copy() -> None:
            hv.delete_volume(POOL, name)
            IsoHostCopy.objects.all().delete()

        def vapor_once() -> float:
            forget_copy()
            started = time.perf_counter()
            iso_on_host(iso=iso, host=host, hv=hv)
            return time.perf_counter() - started

        def upload_once() -> float:
            forget_copy()
            started = time.perf_counter()
            hv.upload_volume_file(POOL, name, str(path), owned=False)
            return time.perf_counter() - started

        copy = Target(1, f"ISO copy to a remote host ({args.mib} MiB), upload and sha256 checked on the host",
                      "virsh vol-create-as + vol-upload", "MB/s", 0.9, higher_is_better=True)  # fmt: skip
        upload = Target(2, "the same, upload only (no check on the host; informative: the same transfer as the baseline)",
                        "virsh vol-create-as + vol-upload", "MB/s", 0.9, higher_is_better=True)  # fmt: skip
        mb = size / 1e6
        for index in range(args.pairs):
            if index % 2:
                candidate, only = vapor_once(), upload_once()
                base = baseline_once(uri, path, size)
            else:
                base = baseline_once(uri, path, size)
                only, candidate = upload_once(), vapor_once()
            copy.add(mb / base, mb / candidate)
            upload.add(mb / base, mb / only)
            say(f"  pair {index + 1}: virsh {base:.2f} s, Vapor copy+check {candidate:.2f} s, Vapor upload {only:.2f} s")
        forget_copy()
        version = libvirt.getVersion()
        facts = [
            *machine_facts(top),
            ("libvirt", f"{version // 1000000}.{version // 1000 % 1000}"),
            ("remote host", "scripts/hosts.sh vh1: libvirtd in its own network and mount namespaces, qemu+tcp over a veth pair"),
            ("file", f"{args.mib} MiB of random bytes, in the page cache"),
        ]
        rows = [
            [label, f"{statistics.median(s):.0f}", f"{min(s):.0f}", f"{max(s):.0f}"]
            for label, s in (
                ("virsh vol-create-as + vol-upload", copy.baseline_samples),
                ("Vapor copy + check on the host", copy.candidate_samples),
                ("Vapor upload only", upload.candidate_samples),
            )
        ]
        detail = Section(
            title="Rates",
            intro="MB/s of each side (file size over wall time). Vapor's copy + check is its upload plus a read-back of "
            "the whole copy on the host through libvirt's stream download, hashed as it comes: a second transfer of the "
            "file, which vol-upload does not make (it checks nothing).",
            header=["side", "median", "min", "max"],
            rows=rows,
        )
        method = f"{args.pairs} interleaved pairs, in-process (libvirt-python over the kept connection) against virsh processes."
        run.publish(run.render(method, facts, [targets_section([copy, upload]), detail]), args.write)
    finally:
        if "vms.hypervisor" in sys.modules:
            sys.modules["vms.hypervisor"].forget_hypervisors()  # closed now, not by the interpreter's teardown
        shutil.rmtree(top, ignore_errors=True)
        from django.db import connections

        connections.close_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
