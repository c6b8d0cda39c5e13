"""The RELIABILITY.md renderer sums cases per suite and flags what was not refused or left behind."""

from __future__ import annotations

from tests.reliability.plugin import render


def test_render_sums_per_suite_and_flags_failures():
    cases = [
        {"suite": "hostile paths", "case": "/etc/shadow as disks.0.path", "refused": True, "leftovers": 0, "detail": "400 disks.0.path"},
        {"suite": "hostile paths", "case": "a|b", "refused": False, "leftovers": 2, "detail": "202"},
        {"suite": "faults: download", "case": "cut at 50 %", "refused": True, "leftovers": 0, "detail": ""},
    ]
    text = render(cases, 1, ["-m", "reliability"])
    assert "| faults: download | 1 | 1 | 0 | 0 |" in text
    assert "| hostile paths | 2 | 1 | 1 | 2 |" in text
    assert "| **all** | **3** | **2** | **1** | **2** |" in text
    assert "not a passing run" in text and "a\\|b" in text and "| **no** |" in text
