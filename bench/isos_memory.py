"""Target 8 of bench.isos_bench: the worker's memory while it downloads or hashes a large ISO.

Each measure runs in a child process of its own (`python -m bench.isos_memory download URL` or `hash PATH`),
set up like a worker: Django on the run's database, then one small job of the same kind untimed, so imports
and first-use allocations are behind it. The child then resets its peak RSS (writing 5 to
/proc/self/clear_refs), reads its RSS, runs the real job on the large ISO and reads its peak RSS (VmHWM): the
growth is the peak minus the RSS before. Streaming code grows by a few chunks whatever the size; a whole-file
read would grow by the file.

The large ISO is sparse (an ISO head, then a hole up to the size): hashing reads the hole as zeros and the
server sends zeros, while the download writes every byte to disk as real data.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.common import MIB, PROJECT_ROOT, Target, require, say
from bench.isos_support import Workspace, write_iso

LIMIT_MIB = 64
WARM_SIZE = 8 * MIB


def status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    require(match is not None, f"/proc/self/status has no {field}")
    assert match is not None
    return int(match[1])


def reset_peak() -> None:
    """VmHWM back to the current RSS (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(mode: str, source: str, warm_source: str) -> dict[str, int | str]:
    """In the child process: one warm-up job, then the measured one. Returns sizes in KiB."""
    import django

    django.setup()
    from isos import jobs
    from isos.models import IsoImage
    from isos.services import IsoMetadata, iso_create_download, iso_register_path

    def job(where: str) -> IsoImage:
        if mode == "download":
            iso = iso_create_download(url=where, meta=IsoMetadata())
            jobs.iso_run_download(iso_id=iso.pk)
        else:
            iso = iso_register_path(path=where, meta=IsoMetadata())
            jobs.iso_run_hash(iso_id=iso.pk)
        iso.refresh_from_db()
        require(iso.status == "ready", f"the {mode} job ended {iso.status}: {iso.error}")
        return iso

    def forget(iso: IsoImage) -> None:
        if mode == "download":
            Path(iso.path).unlink()
        iso.delete()

    forget(job(warm_source))
    reset_peak()
    before = status_kib("VmRSS")
    iso = job(source)
    peak = status_kib("VmHWM")
    size = iso.size or 0
    forget(iso)
    return {"mode": mode, "rss_before_kib": before, "peak_kib": peak, "growth_kib": peak - before, "bytes": size}


def measure(mode: str, source: str, warm_source: str) -> dict[str, int | str]:
    argv = [sys.executable, "-m", "bench.isos_memory", mode, source, warm_source]
    result = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    require(result.returncode == 0, f"the {mode} memory child failed: {result.stderr.strip()[-2000:]}")
    figures: dict[str, int | str] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def bench_memory(space: Workspace, base_url: str, size: int, runs: int) -> list[Target]:
    say(f"target 8: a sparse {size // MIB} MiB ISO, downloaded and hashed by the jobs in child processes")
    big = write_iso(space.served / "memory.iso", size, sparse=True)
    small = write_iso(space.served / "memory-warm.iso", WARM_SIZE)
    targets = []
    sources = {
        "download": (f"{base_url}/{big.name}", f"{base_url}/{small.name}", "downloading (iso_run_download)"),
        "hash": (str(big), str(small), "hashing (iso_run_hash)"),
    }
    for mode, (source, warm_source, what) in sources.items():
        target = Target(
            8,
            f"Peak RSS growth of a worker {what} a {size // MIB} MiB ISO",
            f"the limit, {LIMIT_MIB} MiB (ratio = growth / limit)",
            "MiB",
            1.0,
            higher_is_better=False,
        )
        for number in range(1, runs + 1):
            figures = measure(mode, source, warm_source)
            require(figures["bytes"] == size, f"the {mode} job saw {figures['bytes']} bytes, expected {size}")
            growth = int(figures["growth_kib"]) / 1024
            target.add(LIMIT_MIB, growth)
            say(f"  target 8 {mode} run {number}: RSS {int(figures['rss_before_kib']) / 1024:.1f} MiB before, growth {growth:.1f} MiB")
        targets.append(target)
    big.unlink()
    small.unlink()
    return targets


if __name__ == "__main__":
    print(json.dumps(child(*sys.argv[1:4])))
