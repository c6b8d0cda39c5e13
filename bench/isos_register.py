"""Target 3 of bench.isos_bench: `register_isos` on several ISOs at once, against the same command on one at a time.

Both sides run the real command as an operator does, `manage.py register_isos PATH --jobs 2` in a child
process on a fresh copy of an empty migrated SQLite database: once on the directory of all the files, and
once per file, one after the other. Every run's digests are read back from its database and checked.

The command's start-up (Python, Django, system checks) is part of what an operator waits for, so it is part of
both sides, and it is what one invocation per file repeats. A second table measures the same work inside one
process (`call_command`), where only the hashing is left: there the speed-up is bounded by the CPU time of
md5 + sha256, which the findings compute from the hash rates of target 1's detail.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import MIB, PROJECT_ROOT, Measure, Section, Target, require, say
from bench.isos_support import Workspace, cores, rate, run_pairs, timed, warm, write_iso


def expected_digests(files: list[Path]) -> dict[str, tuple[str, str]]:
    """md5 and sha256 of each file with hashlib alone (this also reads each file once into the page cache)."""
    answers = {}
    for path in files:
        md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with open(path, "rb") as stream:
            while chunk := stream.read(MIB):
                md5.update(chunk)
                sha256.update(chunk)
        answers[str(path)] = (md5.hexdigest(), sha256.hexdigest())
    return answers


def stored_digests(database: Path) -> dict[str, tuple[str, str]]:
    from isos.models import IsoImage

    with sqlite3.connect(database) as db:
        rows = db.execute(f"SELECT path, md5_hash, sha256_hash, status FROM {IsoImage._meta.db_table}").fetchall()
    require(all(status == "ready" for *_, status in rows), "register_isos left an ISO that is not ready")
    return {path: (md5, sha256) for path, md5, sha256, _ in rows}


def bench_register(space: Workspace, file_size: int, count: int, jobs: int, pairs: int, rounds: int) -> tuple[Target, Section]:
    say(f"target 3: writing {count} ISOs of {file_size // MIB} MiB")
    files = [write_iso(space.batch / f"batch-{n}.iso", file_size) for n in range(count)]
    for path in files:
        warm(path)
    expected = expected_digests(files)
    total = file_size * count
    run_db = space.root / "register.sqlite3"

    def command(path: Path) -> str:
        environment = dict(os.environ, DATABASE_URL=f"sqlite:///{run_db}")
        argv = [sys.executable, "manage.py", "register_isos", str(path), "--jobs", str(jobs)]
        result = subprocess.run(argv, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, check=False)
        require(result.returncode == 0, f"register_isos failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result.stdout

    def checked(run: Callable[[], None]) -> float:
        shutil.copyfile(space.empty_database, run_db)
        seconds = timed(run)
        require(stored_digests(run_db) == expected, "register_isos stored other digests than hashlib's")
        return rate(total, seconds)

    def one_by_one() -> None:
        for path in files:
            require("registered 1," in command(path), f"register_isos {path} did not register it")

    def all_at_once() -> None:
        require(f"registered {count}," in command(space.batch), f"register_isos {space.batch} did not register {count} files")

    say(f"target 3: register_isos on {count} files at once vs one invocation per file, --jobs {jobs}")
    target = run_pairs(
        Target(
            3,
            f"`manage.py register_isos DIR --jobs {jobs}` on {count} ISOs of {file_size // MIB} MiB",
            f"the same command on 1 of them x {count}, one after the other",
            "MB/s",
            1.6,
            higher_is_better=True,
        ),
        pairs,
        lambda: checked(one_by_one),
        lambda: checked(all_at_once),
    )
    run_db.unlink(missing_ok=True)
    section = in_process(files, expected, jobs, rounds, total)
    median = statistics.median(target.ratios)
    section.findings.insert(
        0,
        f"With start-up (the target): **{median:.2f}x** faster, {statistics.median(target.candidate_samples):,.0f} vs "
        f"{statistics.median(target.baseline_samples):,.0f} MB/s over the {total // MIB} MiB.",
    )
    for path in files:
        path.unlink()
    return target, section


def in_process(files: list[Path], expected: dict[str, tuple[str, str]], jobs: int, rounds: int, total: int) -> Section:
    """The same registrations with `call_command` in this process, and the hashing alone as `--jobs` used to do it."""
    from django.core.management import call_command

    from isos.hashing import hash_file
    from isos.models import IsoImage

    def register(*paths: Path) -> Callable[[], None]:
        def run() -> None:
            for path in paths:
                call_command("register_isos", str(path), jobs=jobs, stdout=io.StringIO(), stderr=io.StringIO())
            stored = {iso.path: (iso.md5_hash, iso.sha256_hash) for iso in IsoImage.objects.filter(path__in=expected)}
            require(stored == expected, "register_isos stored other digests than hashlib's")
            IsoImage.objects.filter(path__in=expected).delete()

        return run

    def pool(parallel: bool) -> Callable[[], None]:
        def run() -> None:
            with ThreadPoolExecutor(max_workers=jobs) as executor:
                found = list(executor.map(lambda path: hash_file(path, parallel=parallel), files))
            require([(d.md5, d.sha256) for d in found] == [expected[str(p)] for p in files], "hash_file digests are wrong")

        return run

    variants = {
        f"(a) {len(files)} x `register_isos FILE`, one after the other": register(*files),
        f"(b) `register_isos DIR --jobs {jobs}` (each file on one thread)": register(files[0].parent),
        f"(c) hashing only: {jobs} files at once, each with md5 on a helper thread": pool(parallel=True),
        f"(d) hashing only: {jobs} files at once, each on one thread": pool(parallel=False),
    }
    measures = {label: Measure(label, [], total) for label in variants}
    say(f"target 3, in process: {rounds} rounds of {len(variants)} variants")
    for number in range(1, rounds + 1):
        for label, run in variants.items():
            measures[label].samples.append(timed(run))
            say(f"  round {number}: {label}: {measures[label].rate:,.0f} MB/s so far")
    one, both, helper, single = measures.values()
    return Section(
        title="3. register_isos: several files at once",
        intro=(
            f"The target's table times `manage.py register_isos` in child processes. Here the same work runs in this "
            f"process (variants interleaved, rounds: {rounds}), so start-up is left out; rates are over all {total // MIB} MiB."
        ),
        header=["variant", "median s", "MB/s", "runs (s)"],
        rows=[[m.label, f"{m.median:.3f}", f"{m.rate:,.0f}", m.runs()] for m in measures.values()],
        findings=[
            f"Without start-up, `--jobs {jobs}` over one file at a time: {both.rate / one.rate:.2f}x on {cores()} CPU(s).",
            f"Each file on one thread while {jobs} run at once, over each with an md5 helper: {single.rate / helper.rate:.2f}x "
            "(the command hashes each file on one thread when it runs as many files at once as there are CPUs).",
        ],
    )
