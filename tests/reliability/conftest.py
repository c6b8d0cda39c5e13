"""The reliability suites (issue 5): hostile inputs, authorization, injected faults.

Every case is recorded with `tally.record(...)`: which suite, whether the
hostile input was refused (or the fault survived) and how many leftovers
(files, volumes, domains, rows, connections) were found afterwards. With
`--reliability-report` the session writes the totals to docs/RELIABILITY.md
(`make reliability`); without it the records only go to
var/reliability/cases.jsonl, so a plain test run changes no tracked file.

A case that is not refused, or leaves anything behind, also fails its test:
the figures are a summary of assertions, not a substitute for them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.vms.conftest import hv  # noqa: F401 (the in-memory hypervisor fixture, shared with the VM tests)

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "var" / "reliability" / "cases.jsonl"


@dataclass(frozen=True)
class Case:
    suite: str  # e.g. "hostile paths", "faults: download"
    case: str  # what was tried, in words
    refused: bool  # hostile input refused with a 4xx, or the fault handled (job failed cleanly, retried...)
    leftovers: int  # files, volumes, domains, rows or connections found afterwards
    detail: str = ""  # status code, error code, what was left


class Tally:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, suite: str, case: str, *, refused: bool, leftovers: int = 0, detail: str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps(asdict(Case(suite, case, refused, leftovers, detail))) + "\n")


@pytest.fixture
def tally() -> Tally:
    return Tally(CASES)
