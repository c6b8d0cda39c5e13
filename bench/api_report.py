"""The report of bench.api_bench: how the figures were taken, and the tables behind targets 6 and 7."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.common import Section

if TYPE_CHECKING:
    from bench.api_bench import CreateFigures


def method_text(args: argparse.Namespace) -> str:
    return (
        "two worker processes, each a Django (DEBUG off) on its own PostgreSQL database, requests through DRF's test client "
        "with an API token (the connection stays open between requests, as with CONN_MAX_AGE > 0). "
        f"Target 6: {args.rounds} rounds of {args.pairs} create-enhanced request pairs, each pair the same body (fresh name, "
        "ISO named by id, exact name, name in upper case, path or file name, in turn) sent to the empty and to the loaded "
        "database one after the other, the order alternating; the ratio of a round is the loaded p50 over the empty p50. "
        "Each worker opens one libvirt connection per request, as the API does (`get_hypervisor()`). "
        "django-q2 is asynchronous (VAPOR_Q_SYNC=0) with no cluster: the task is queued in the ORM broker's table, not run; "
        "the VM and the queued task are deleted after each answer, untimed. Validation talks to the real libvirtd "
        f"(qemu:///system). Target 7: {args.rounds} rounds of {args.list_requests} GET pairs (bare DRF view, Vapor, order "
        "alternating) on the loaded database; a round's ratio is Vapor's req/s over the bare view's."
    )


def _ms(samples: Sequence[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}" if samples else "-"


def create_section(figures: CreateFigures, seeded: dict[str, dict[str, int]], kinds: Sequence[str]) -> Section:
    empty, loaded = seeded["empty"], seeded["loaded"]
    section = Section(
        "6. create-enhanced by ISO reference",
        f"The empty database holds {empty['isos']} ISOs (the ones the requests name) and {empty['vms']} VMs; the loaded one "
        f"{loaded['isos']:,} ISOs with varied names, 1-3 tags each, and {loaded['vms']:,} VMs with {loaded['disks']:,} disks and "
        f"{loaded['nics']:,} NICs. Times are medians over every round; queries are those of one request (DEBUG-style capture).",
        ["ISO named by", "p50 empty ms", "p50 loaded ms", "loaded / empty", "SQL queries empty / loaded", "requests per side"],
    )
    for kind in kinds:
        e, lo = figures.samples["empty"].get(kind, []), figures.samples["loaded"].get(kind, [])
        ratio = f"{statistics.median(lo) / statistics.median(e):.2f}" if e and lo else "-"
        queries = f"{figures.queries['empty'].get(kind, '-')} / {figures.queries['loaded'].get(kind, '-')}"
        section.rows.append([kind, _ms(e), _ms(lo), ratio, queries, str(len(e))])
    all_e, all_lo = figures.all("empty"), figures.all("loaded")
    total = f"{statistics.median(all_lo) / statistics.median(all_e):.2f}"
    section.rows.append(["**all**", _ms(all_e), _ms(all_lo), total, "", str(len(all_e))])
    added = {k: statistics.median(figures.samples["loaded"][k]) - statistics.median(figures.samples["empty"][k]) for k in kinds}
    worst = max(added, key=lambda k: added[k])
    spread = sorted(all_lo)
    section.findings = [
        f"The loaded database adds {(statistics.median(all_lo) - statistics.median(all_e)) * 1000:+.1f} ms to the median request "
        f"(loaded p90 {spread[int(len(spread) * 0.9)] * 1000:.1f} ms); the reference kind it slows most is `{worst}` "
        f"({added[worst] * 1000:+.1f} ms).",
        *([FILENAME_SCAN] if worst == "filename" and added[worst] > 0.002 else []),
        FIXES,
    ]
    return section


FILENAME_SCAN = (
    "A bare file name is looked for among the library's files with `path LIKE '%/name.iso'`, which no B-tree index can "
    "serve: PostgreSQL reads every ISO row (about 4 ms for 10,000 ISOs here, growing with the library). An indexed "
    "file-name column would remove it; the other kinds use indexes only."
)
FIXES = (
    "Two fixes came from profiling this target (pyinstrument, `--profile DIR`); measured with this command on "
    "2026-11-27 before and after them: p50 loaded 64.2 -> 30.4 ms, ratio 1.18 -> 1.03. (1) django-q2's ORM broker calls "
    "`close_old_connections()` when it finds the connection in autocommit mode, which with `CONN_MAX_AGE=0` closed the "
    "request's connection after the VM was committed, so the rest of the request opened a new one (about 15-20 ms on both "
    "sides): `vms.services.lifecycle._enqueue` now queues inside a transaction. (2) A name in other case (`name__iexact`, "
    "also tried for paths and file names before their own rules) read the whole ISO table in name order (13.7 ms for "
    "10,000 ISOs in EXPLAIN ANALYZE): an index on `UPPER(name)` (isos migration 0004) makes it 0.07 ms."
)


def list_section(details: dict[str, Any], isos: int, vms: int) -> Section:
    section = Section(
        f"7. List pages with {isos:,} ISOs and {vms:,} VMs",
        "The first page (`?limit=100`) of Vapor's endpoint and of a bare DRF `ListAPIView` over the same queryset "
        "(bench/api_list.py: `ModelSerializer`s with the same fields, DRF's `LimitOffsetPagination` with the same sizes). "
        "Median over every round.",
        ["list", "bare ms", "Vapor ms", "bare req/s", "Vapor req/s", "SQL queries bare / Vapor"],
    )
    for label, detail in details.items():
        bare, vapor = detail["times"]["bare"], detail["times"]["vapor"]
        b, v = statistics.median(bare), statistics.median(vapor)
        section.rows.append(
            [label, f"{b * 1000:.1f}", f"{v * 1000:.1f}", f"{1 / b:.1f}", f"{1 / v:.1f}", "{} / {}".format(*detail["queries"])]
        )
    section.findings = [
        "A page costs the same number of SQL queries whatever the table's size: a COUNT, the page's rows, one per prefetched "
        "relation (tests/test_list_pagination.py pins the counts for 10 and 200 rows).",
    ]
    return section
