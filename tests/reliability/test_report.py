"""The RELIABILITY.md renderer sums cases per suite, counts allowed cells apart from refusals, flags what
did not go as it must, and keeps the mutation check's block when it rewrites the file."""

from __future__ import annotations

from tests.reliability.plugin import keep_mutation_block, render


def test_render_sums_per_suite_and_flags_failures():
    cases = [
        {"suite": "hostile paths", "case": "/etc/shadow as disks.0.path", "refused": True, "leftovers": 0, "detail": "400 disks.0.path"},
        {"suite": "hostile paths", "case": "a|b", "refused": False, "leftovers": 2, "detail": "202"},
        {"suite": "faults: download", "case": "cut at 50 %", "refused": True, "leftovers": 0, "detail": ""},
    ]
    text = render(cases, 1, ["-m", "reliability"])
    assert "| faults: download | 1 | 1 | - | 0 | 0 |" in text
    assert "| hostile paths | 2 | 1 | - | 1 | 2 |" in text
    assert "| **all** | **3** | **2** | **-** | **1** | **2** |" in text
    assert "not a passing run" in text and "a\\|b" in text and "| **no** |" in text


def test_allowed_cells_are_counted_apart_from_refusals():
    cases = [
        {"suite": "authorization", "case": "viewer x API DELETE vm", "refused": True, "leftovers": 0, "detail": "denied: 403"},
        {"suite": "authorization", "case": "admin x API DELETE vm", "allowed": True, "effect": True, "refused": False, "leftovers": 0,
         "detail": "204: VM row deleted, domain undefined"},
        {"suite": "authorization", "case": "operator x API DELETE vm", "allowed": True, "effect": False, "refused": False, "leftovers": 0,
         "detail": "204: the VM row is still there"},
    ]  # fmt: skip
    text = render(cases, 1, [])
    # 1 refused, 1 of 2 allowed cells took effect, 1 not as expected: no allowed cell counts as "refused".
    assert "| authorization | 3 | 1 | 1 of 2 | 1 | 0 |" in text
    assert "| admin x API DELETE vm | allowed: takes effect | yes | 0 | 204: VM row deleted, domain undefined |" in text
    assert "| operator x API DELETE vm | allowed: takes effect | **no** |" in text
    assert "| viewer x API DELETE vm | refused / survived | yes |" in text


def test_the_mutation_block_survives_a_rewrite():
    block = "<!-- mutation:start -->\n## Mutation check\n- Score: 3 of 3\n<!-- mutation:end -->\n"
    old = "# Reliability\n\nold figures\n\n" + block
    assert keep_mutation_block("# Reliability\n\nnew figures\n", old) == "# Reliability\n\nnew figures\n\n" + block
    assert keep_mutation_block("# Reliability\n", "# Reliability\n\nno block\n") == "# Reliability\n"
