"""What every benchmark module shares: measures, report sections and their rendering, the machine table, the
shared docs/BENCHMARKS.md file with one block per module, and Django on a throwaway SQLite database.

Each module measures its own part of Vapor, but their reports must read alike (one head, one machine table,
sections of a table plus findings) and must not overwrite each other's figures, so all of that lives here.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000  # rates are in MB/s (10^6 bytes), like the figures in the performance notes
PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPORT_PATH = PROJECT_ROOT / "docs" / "BENCHMARKS.md"


# ---------------------------------------------------------------------------
# Measuring


@dataclass
class Measure:
    """Wall-clock samples of one variant, in seconds; `nbytes` turns them into a rate."""

    label: str
    samples: list[float]
    nbytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def rate(self) -> float:
        """MB/s at the median time."""
        return self.nbytes / self.median / MB

    def runs(self, scale: float = 1.0, digits: int = 3) -> str:
        return ", ".join(f"{s * scale:.{digits}f}" for s in self.samples)


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)


def require(condition: bool, message: str) -> None:
    """A benchmark whose code path did the wrong thing measures nothing: stop loudly."""
    if not condition:
        raise RuntimeError(message)


# ---------------------------------------------------------------------------
# Targets: a ratio against a baseline measured side by side in the same run


@dataclass
class Target:
    """One of the issue's targets: `candidate` against `baseline`, measured in interleaved pairs.

    The machines are noisy, so a figure is never an absolute time: each pair (one baseline run, then one
    candidate run, or the other way round) gives one ratio, and the report shows the min, median and max
    of those ratios. `higher_is_better` says which way the ratio should go: rates (MB/s, req/s, speed-up)
    are higher-is-better with the target a minimum; times (s, ms) are lower-is-better with a maximum.

    The ratio is always candidate over baseline of the quantity named by `unit`: for a rate, the
    candidate's rate over the baseline's; for a time, the candidate's time over the baseline's.
    """

    number: int
    what: str
    baseline: str
    unit: str  # what each sample is: "MB/s", "s", "req/s", ...
    target: float  # the ratio the issue asks for
    higher_is_better: bool
    baseline_samples: list[float] = field(default_factory=list)
    candidate_samples: list[float] = field(default_factory=list)
    note: str = ""  # extra condition or finding, in words (e.g. "and p50 <= 50 ms: 12.3 ms")
    extra_met: bool = True  # an extra absolute condition of the target (e.g. p50 <= 50 ms), checked by the module

    def add(self, baseline: float, candidate: float) -> None:
        self.baseline_samples.append(baseline)
        self.candidate_samples.append(candidate)

    @property
    def ratios(self) -> list[float]:
        return [c / b for b, c in zip(self.baseline_samples, self.candidate_samples, strict=True) if b]

    @property
    def met(self) -> bool:
        median = statistics.median(self.ratios)
        within = median >= self.target if self.higher_is_better else median <= self.target
        return within and self.extra_met

    def row(self) -> list[str]:
        ratios = self.ratios
        sign = ">=" if self.higher_is_better else "<="
        return [
            str(self.number),
            self.what,
            self.baseline,
            f"{sign} {self.target:g}x" + (f"; {self.note}" if self.note else ""),
            f"{min(ratios):.2f} / **{statistics.median(ratios):.2f}** / {max(ratios):.2f} (n={len(ratios)})",
            f"{statistics.median(self.baseline_samples):.4g} vs {statistics.median(self.candidate_samples):.4g} {self.unit}",
            "met" if self.met else "**missed**",
        ]


TARGET_HEADER = ["#", "what", "baseline (same run)", "target", "ratio min / median / max", "median baseline vs Vapor", "result"]


def targets_section(targets: Sequence[Target], intro: str = "") -> Section:
    """The table of a module's targets: each ratio with its spread and whether the median meets the target."""
    return Section(
        title="Targets",
        intro=intro or "Each ratio is Vapor's figure over the baseline's, from pairs measured side by side in this run.",
        header=TARGET_HEADER,
        rows=[t.row() for t in targets],
    )


# ---------------------------------------------------------------------------
# Django on a throwaway database


def django_setup(workdir: Path) -> None:
    """Settings read the environment at import time, so everything is set before Django is imported.

    DEBUG is off, as in production (no per-query logging); SSL redirect is off because the test client
    speaks plain HTTP; the secret key is a throwaway that only signs nothing in this process.
    """
    os.environ["DJANGO_SETTINGS_MODULE"] = "vaporsite.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["VAPOR_DATA_DIR"] = str(workdir)
    os.environ["VAPOR_DEBUG"] = "0"
    os.environ["VAPOR_SECRET_KEY"] = "bench-" + secrets.token_hex(24)
    os.environ["VAPOR_SSL_REDIRECT"] = "0"
    os.environ["VAPOR_ALLOWED_HOSTS"] = "testserver"
    import django

    django.setup()


def migrate(message: str) -> None:
    """Create the schema in the fresh database django_setup pointed at; the benchmark never touches var/."""
    from django.core.management import call_command

    say(message)
    call_command("migrate", interactive=False, verbosity=0, stdout=io.StringIO())


# ---------------------------------------------------------------------------
# Machine facts


def cpu_model() -> tuple[str, bool]:
    """The CPU's model name and whether it has SHA extensions (sha256 is several times faster with them)."""
    model, sha_ni = "unknown", False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, sha_ni
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        if key.strip() == "flags":
            sha_ni = sha_ni or "sha_ni" in value.split()
    return model, sha_ni


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def filesystem_of(path: Path) -> str:
    """Filesystem type of the mount holding `path` (ext4, tmpfs...): fsync and page cache behaviour depend on it."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) >= len(best):
            best, kind = parts[1], parts[2]
    return f"{kind} ({best})"


def machine_facts(workdir: Path) -> list[tuple[str, str]]:
    import django

    model, sha_ni = cpu_model()
    return [
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU", model + (" (SHA-NI)" if sha_ni else " (no SHA-NI)")),
        ("memory", memory_gib()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Django", django.get_version()),
        ("kernel", platform.release()),
        ("temp dir filesystem", filesystem_of(workdir)),
    ]


# ---------------------------------------------------------------------------
# The report


@dataclass
class Section:
    """One part of the report: a table plus sentences computed from its figures."""

    title: str
    intro: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.intro, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.findings:
            lines.append("")
            lines.extend(f"- {finding}" for finding in self.findings)
        return "\n".join(lines) + "\n"


@dataclass
class Run:
    """One run of a benchmark module, from its command line to its report on stdout and its block of the shared file.

    `module` names the file in bench/ and the command, and its block in docs/BENCHMARKS.md is `module` without
    `_bench`; `caveat` is the head's second line, saying what the figures may be compared with.
    """

    module: str
    title: str
    caveat: str
    argv: Sequence[str] | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    clock: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> str:
        return self.module.removesuffix("_bench")

    def parser(self, doc: str | None) -> argparse.ArgumentParser:
        return argparse.ArgumentParser(prog=f"python -m bench.{self.module}", description=doc.splitlines()[0] if doc else None)

    @property
    def command(self) -> str:
        """The command as typed, for the report: the arguments make the figures comparable or not."""
        args = sys.argv[1:] if self.argv is None else self.argv
        return " ".join([f".venv/bin/python -m bench.{self.module}", *(shlex.quote(a) for a in args)])

    def render(self, method: str, facts: list[tuple[str, str]], sections: list[Section]) -> str:
        """The whole report; the run's length is taken now, once every part is done."""
        lines = [
            f"# Benchmarks: {self.title}",
            "",
            f"Written by `bench/{self.module}.py --write`; rerun it to refresh, do not edit by hand. These are measurements, not",
            self.caveat,
            "",
            f"- Command: `{self.command}`",
            f"- Date: {self.started.strftime('%Y-%m-%d %H:%M UTC')} (whole run {time.perf_counter() - self.clock:.0f} s)",
            f"- Method: {method}",
            "",
            "| machine | |",
            "|---|---|",
            *(f"| {key} | {value} |" for key, value in facts),
            "",
        ]
        return "\n".join(lines) + "\n" + "\n".join(section.markdown() for section in sections)

    def publish(self, report: str, write: bool) -> None:
        """The report on stdout; with --write, also in this module's block of docs/BENCHMARKS.md."""
        print(report)
        if write:
            write_report(REPORT_PATH, self.key, report)
            say(f"wrote the {self.key} block of {REPORT_PATH}")


REPORT_HEADER = """# Benchmarks

Figures from the modules in `bench/`. Each `python -m bench.<module> --write` replaces only its own block
(between its `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers) and keeps the others; do not edit by hand.
"""
BLOCK_RE = re.compile(r"<!-- bench:(?P<key>[a-z0-9_-]+) -->\n(?P<body>.*?)\n?<!-- /bench:(?P=key) -->", re.DOTALL)
LEGACY_TITLE = "# Benchmarks: ISO library"  # before the markers, isos_bench wrote the whole file


def demote_headings(markdown: str) -> str:
    """One level down for every heading outside code fences: a benchmark's report is a block of the shared file."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        lines.append("#" + line if not fenced and re.match(r"#{1,5} ", line) else line)
    return "\n".join(lines)


def write_report(path: Path, key: str, report: str) -> None:
    """Replace benchmark `key`'s block of `path` with `report`, keeping every other benchmark's block in place.

    Several modules share docs/BENCHMARKS.md and each run measures only its own part, so a run must not
    drop the others' figures. A file with no markers is the whole-file report isos_bench wrote before
    blocks existed: it is kept as the isos block rather than lost on the first run of another module.
    The new text is written to a temporary file and renamed over the old one, so a crash leaves either.
    """
    text = path.read_text() if path.exists() else ""
    blocks = {match["key"]: match["body"].strip() for match in BLOCK_RE.finditer(text)}
    if not blocks and text.startswith(LEGACY_TITLE):
        blocks["isos"] = demote_headings(text.strip())
    blocks[key] = demote_headings(report.strip()) if report.startswith("# ") else report.strip()
    body = "\n\n".join(f"<!-- bench:{name} -->\n{block}\n<!-- /bench:{name} -->" for name, block in blocks.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(REPORT_HEADER + "\n" + body + "\n")
    partial.replace(path)
