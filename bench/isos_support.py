"""What the ISO benchmark's parts share: the run's directories and Django settings, real ISO files of a given size,
the page cache, interleaved pairs, and the peak RSS of a process.

The parts measure what Vapor really runs (the jobs on real IsoImage rows, the management command), so they need
files that are ISO images (a volume descriptor `inspect_iso` accepts) of any size, Django pointed at the run's
directories, and a way to time a baseline and Vapor side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.common import MB, MIB, Target, django_setup, migrate, require, say

LABEL = "VAPOR_BENCH"


@dataclass(frozen=True)
class Workspace:
    """The run's temp directory and the directories Vapor's settings point at (all inside it)."""

    root: Path

    @property
    def library(self) -> Path:
        """VAPOR_ISO_DIRS: files registered by path (target 1)."""
        return self.root / "library"

    @property
    def downloads(self) -> Path:
        """VAPOR_ISO_DOWNLOAD_DIR: where downloads land (target 2), and curl's output next to them."""
        return self.root / "downloads"

    @property
    def served(self) -> Path:
        """What the loopback HTTP server serves."""
        return self.root / "served"

    @property
    def batch(self) -> Path:
        """VAPOR_ISO_ROOTS: the files `register_isos` registers (target 3)."""
        return self.root / "batch"

    @property
    def database(self) -> Path:
        return self.root / "bench.sqlite3"

    @property
    def empty_database(self) -> Path:
        """A migrated database with no rows, copied for every `register_isos` subprocess run."""
        return self.root / "empty.sqlite3"

    def environment(self) -> dict[str, str]:
        """Vapor's settings for this run, set in os.environ before Django starts (subprocesses inherit them)."""
        return {
            "VAPOR_ISO_DIRS": str(self.library),
            "VAPOR_ISO_DOWNLOAD_DIR": str(self.downloads),
            "VAPOR_ISO_ROOTS": f"{self.batch}:{self.served}",
            "VAPOR_DOWNLOAD_ALLOW_PRIVATE": "1",  # the server is on 127.0.0.1
            "VAPOR_DOWNLOAD_ATTEMPTS": "1",
            "VAPOR_Q_SYNC": "0",  # tasks queued by the services stay in the queue; the parts call the jobs themselves
        }


def open_workspace(parent: Path | None) -> tuple[TemporaryDirectory[str], Workspace]:
    """A temp directory with Vapor's directories, Django set up on a fresh database inside it, and an empty copy."""
    holder = TemporaryDirectory(prefix="vapor-bench-", dir=parent)
    space = Workspace(Path(holder.name))
    for directory in (space.library, space.downloads, space.served, space.batch):
        directory.mkdir()
    os.environ.update(space.environment())
    django_setup(space.root)
    migrate("migrating a fresh SQLite database in the temp directory")
    from django.db import connections

    connections.close_all()
    shutil.copyfile(space.database, space.empty_database)
    return holder, space


# ---------------------------------------------------------------------------
# Files


def write_iso(path: Path, size: int, *, sparse: bool = False) -> Path:
    """An ISO 9660 image of exactly `size` bytes: a small image made by xorriso, then data up to `size`.

    The data is one random MiB repeated (incompressible for sockets, and hashing speed does not depend on the
    bytes); `sparse` extends the file with a hole instead, for the 4 GiB memory runs where only the size matters.
    """
    xorriso = shutil.which("xorriso")
    require(xorriso is not None, "xorriso is not installed (scripts/setup.sh installs it)")
    with TemporaryDirectory(prefix="bench-iso-") as staging:
        (Path(staging) / "README.TXT").write_text("Vapor benchmark image\n")
        subprocess.run([str(xorriso), "-as", "mkisofs", "-quiet", "-V", LABEL, "-o", str(path), staging], check=True, capture_output=True)
    head = path.stat().st_size
    require(head <= size, f"--sizes must be at least {head // MIB + 1} MiB")
    with open(path, "r+b") as stream:
        if sparse:
            stream.truncate(size)
            return path
        stream.seek(head)
        block = os.urandom(MIB)
        left = size - head
        while left:
            left -= stream.write(block[: min(left, MIB)])
    return path


def warm(path: Path) -> None:
    """Read a file once, untimed, so it sits in the page cache: the targets measure CPU work, not the disk."""
    with open(path, "rb") as stream:
        while stream.read(8 * MIB):
            pass


# ---------------------------------------------------------------------------
# Interleaved pairs


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def run_pairs(
    target: Target, pairs: int, baseline: Callable[[], float], candidate: Callable[[], float], after: Callable[[], object] | None = None
) -> Target:
    """Measure `pairs` pairs, baseline and Vapor back to back, alternating which goes first.

    Each callable does its own untimed set-up and clean-up and returns its figure in `target.unit`; `after`, if
    given, runs after each pair (a variant measured for the findings, kept out of the pair itself).
    """
    for number in range(1, pairs + 1):
        order = [("baseline", baseline), ("Vapor", candidate)]
        if number % 2 == 0:
            order.reverse()
        figures = {name: run() for name, run in order}
        target.add(figures["baseline"], figures["Vapor"])
        if after is not None:
            after()
        say(f"  target {target.number} pair {number}: baseline {figures['baseline']:.4g} vs Vapor {figures['Vapor']:.4g} {target.unit}")
    return target


def rate(nbytes: int, seconds: float) -> float:
    """MB/s (10^6 bytes per second)."""
    return nbytes / seconds / MB


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
