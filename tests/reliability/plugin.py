"""The `--reliability-report` option: the session's recorded cases, summed per suite, into docs/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import platform
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "var" / "reliability" / "cases.jsonl"
REPORT = ROOT / "docs" / "RELIABILITY.md"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-report", action="store_true", help="write docs/RELIABILITY.md from the recorded reliability cases")
    parser.addoption(
        "--reliability-append", action="store_true", help="keep the cases an earlier session recorded (a second pass, e.g. on PostgreSQL)"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput") and not session.config.getoption("--reliability-append"):
        CASES.unlink(missing_ok=True)  # this session's cases only


# The block scripts/mutation.py writes into the same file; kept as it is when the rest is rewritten.
MUTATION_BLOCK = re.compile(r"<!-- mutation:start -->.*?<!-- mutation:end -->\n?", re.DOTALL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--reliability-report") or hasattr(session.config, "workerinput"):
        return
    text = render(load(CASES), exitstatus, session.config.invocation_params.args)
    REPORT.write_text(keep_mutation_block(text, REPORT.read_text() if REPORT.exists() else ""))


def keep_mutation_block(text: str, old: str) -> str:
    found = MUTATION_BLOCK.search(old)
    return text if found is None else text.rstrip("\n") + "\n\n" + found.group(0)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def held(case: dict) -> bool:
    """Whether the case went as it must: an allowed cell showed its effect, anything else was refused (or survived)."""
    return bool(case["effect"]) if case.get("allowed") else bool(case["refused"])


def render(cases: list[dict], exitstatus: int, args: tuple[str, ...] | list[str]) -> str:
    keys = ("cases", "refused", "allowed", "effect", "leftovers")
    suites: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    for case in cases:
        totals = suites[case["suite"]]
        totals["cases"] += 1
        if case.get("allowed"):
            totals["allowed"] += 1
            totals["effect"] += int(case["effect"])
        else:
            totals["refused"] += int(case["refused"])
        totals["leftovers"] += case["leftovers"]
    lines = [
        "# Reliability",
        "",
        "Written by `make reliability` (`pytest -m reliability --reliability-report`); do not edit by hand. Each",
        "case is also an assertion in the suite: a hostile input that is not refused, a fault that is not survived,",
        "an allowed action that does not take effect or anything left behind fails the test run, so these figures",
        "summarise a passing run.",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; pytest exit status {exitstatus}"
        + (" (**not a passing run**)" if exitstatus else ""),
        f"- Command: `make reliability` (a SQLite pass, then a PostgreSQL pass; this is the last: `pytest {' '.join(args)}`)",
        f"- Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, kernel {platform.release()}",
        "",
        "Most cases must be refused (or the fault survived). The authorization matrix also has allowed cells, counted",
        "apart: the role may do the action, and the test checks its effect (row created, changed or deleted, task",
        "queued, hypervisor called, object shown).",
        "",
        "| suite | cases tried | refused / survived | allowed, effect shown | not as expected "
        "| leftovers (files, volumes, domains, rows, connections) |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, t: dict[str, int], bold: bool = False) -> str:
        allowed = f"{t['effect']} of {t['allowed']}" if t["allowed"] else "-"
        missed = t["cases"] - t["refused"] - t["effect"]
        cells = [name, t["cases"], t["refused"], allowed, missed, t["leftovers"]]
        return "| " + " | ".join(f"**{c}**" if bold else str(c) for c in cells) + " |"

    for suite in sorted(suites):
        lines.append(row(suite, suites[suite]))
    lines.append(row("all", {k: sum(t[k] for t in suites.values()) for k in keys}, bold=True))
    lines += ["", "## Cases", ""]
    for suite in sorted(suites):
        lines += [f"### {suite}", "", "| case | expected | as expected | leftovers | detail |", "|---|---|---|---|---|"]
        for case in (c for c in cases if c["suite"] == suite):
            detail = str(case.get("detail", "")).replace("|", "\\|").replace("\n", " ")[:160]
            what = str(case["case"]).replace("|", "\\|").replace("\n", " ")[:120]
            expected = "allowed: takes effect" if case.get("allowed") else "refused / survived"
            lines.append(f"| {what} | {expected} | {'yes' if held(case) else '**no**'} | {case['leftovers']} | {detail} |")
        lines.append("")
    return "\n".join(lines) + "\n"
