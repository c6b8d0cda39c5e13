"""The `--reliability-report` option: the session's recorded cases, summed per suite, into docs/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import platform
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--reliability-report") or hasattr(session.config, "workerinput"):
        return
    REPORT.write_text(render(load(CASES), exitstatus, session.config.invocation_params.args))


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def render(cases: list[dict], exitstatus: int, args: tuple[str, ...] | list[str]) -> str:
    suites: dict[str, dict[str, int]] = defaultdict(lambda: {"cases": 0, "refused": 0, "leftovers": 0})
    for case in cases:
        totals = suites[case["suite"]]
        totals["cases"] += 1
        totals["refused"] += int(case["refused"])
        totals["leftovers"] += case["leftovers"]
    lines = [
        "# Reliability",
        "",
        "Written by `make reliability` (`pytest -m reliability --reliability-report`); do not edit by hand. Each",
        "case is also an assertion in the suite: a hostile input that is not refused, a fault that is not survived",
        "or anything left behind fails the test run, so these figures summarise a passing run.",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; pytest exit status {exitstatus}"
        + (" (**not a passing run**)" if exitstatus else ""),
        f"- Command: `make reliability` (a SQLite pass, then a PostgreSQL pass; this is the last: `pytest {' '.join(args)}`)",
        f"- Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, kernel {platform.release()}",
        "",
        "| suite | cases tried | refused / survived | not refused | leftovers (files, volumes, domains, rows, connections) |",
        "|---|---|---|---|---|",
    ]
    for suite in sorted(suites):
        t = suites[suite]
        lines.append(f"| {suite} | {t['cases']} | {t['refused']} | {t['cases'] - t['refused']} | {t['leftovers']} |")
    total = {k: sum(t[k] for t in suites.values()) for k in ("cases", "refused", "leftovers")}
    missed = total["cases"] - total["refused"]
    lines.append(f"| **all** | **{total['cases']}** | **{total['refused']}** | **{missed}** | **{total['leftovers']}** |")
    lines += ["", "## Cases", ""]
    for suite in sorted(suites):
        lines += [f"### {suite}", "", "| case | refused / survived | leftovers | detail |", "|---|---|---|---|"]
        for case in (c for c in cases if c["suite"] == suite):
            detail = str(case.get("detail", "")).replace("|", "\\|").replace("\n", " ")[:160]
            what = str(case["case"]).replace("|", "\\|").replace("\n", " ")[:120]
            lines.append(f"| {what} | {'yes' if case['refused'] else '**no**'} | {case['leftovers']} | {detail} |")
        lines.append("")
    return "\n".join(lines) + "\n"
