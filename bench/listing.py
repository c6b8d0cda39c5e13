"""Timing a list endpoint as its table grows: shared by the ISO and VM list parts of the benchmarks.

Asked without `limit`/`offset`, both endpoints answer with every row at once (the spec's shape), so their time
must grow with the table while their SQL query count must not (an N+1 query would show as a count that grows).
Their first page against a bare DRF view is issue 6's target 7, in bench.api_bench. Each part inserts its rows
with the ORM and says in its section what it inserted; the measuring, the checks of every answer and the
findings live here.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.common import Section, require, say

if TYPE_CHECKING:
    from django.db.models import Model


@dataclass(frozen=True)
class ListEndpoint:
    """A list endpoint: where it answers, the JSON member holding its rows, what one row is called in the report
    ("ISO", "VM"), and how many items each nested list of a whole row holds."""

    url: str
    key: str
    noun: str
    children: dict[str, int]


@dataclass
class ListFigures:
    """Per list size: median and fastest request in seconds, SQL queries per request, response bytes."""

    endpoint: ListEndpoint
    requests: int
    medians: dict[int, float] = field(default_factory=dict)
    fastest: dict[int, float] = field(default_factory=dict)
    queries: dict[int, int] = field(default_factory=dict)
    body: dict[int, int] = field(default_factory=dict)

    def section(self, *, part: int, setup: str, prefetched: str, closing: str, digits: int = 2) -> Section:
        """The report's section: `setup` completes the intro's first sentence, `prefetched` says why the query
        count should not grow with the list, `closing` is the last finding."""
        noun, plural = self.endpoint.noun, f"{self.endpoint.noun}s"
        section = Section(
            f"{part}. List endpoint (GET {self.endpoint.url})",
            f"Django test client (DRF APIClient, force_authenticate as a superuser) against SQLite{setup} {self.requests} requests "
            "per size after one untimed warm-up; queries counted with CaptureQueriesContext on one request.",
            [plural, "median ms", "min ms", "SQL queries / request", "response KiB"],
        )
        for size, median in self.medians.items():
            row = [f"{median * 1000:.1f}", f"{self.fastest[size] * 1000:.1f}", str(self.queries[size]), f"{self.body[size] / 1024:.0f}"]
            section.rows.append([str(size), *row])
        small, large = min(self.medians), max(self.medians)
        per_row = (self.medians[large] - self.medians[small]) / (large - small) * 1000
        constant = self.queries[small] == self.queries[large]
        section.findings = [
            f"Each extra {noun} adds about **{per_row:.{digits}f} ms** "
            f"({large} {plural} take {self.medians[large] / self.medians[small]:.0f}x the time of {small}).",
            f"SQL queries per request: {self.queries[small]} with {small} {plural}, {self.queries[large]} with {large}"
            + (f" (constant: {prefetched})." if constant else " (grows with the list: an N+1 query)."),
            closing,
        ]
        return section


def measure_list(
    endpoint: ListEndpoint, model: type[Model], add_rows: Callable[[int, int], None], requests: int, sizes: Sequence[int]
) -> ListFigures:
    """Time `endpoint` through the DRF test client as a superuser, growing `model`'s table to each size in turn.

    `add_rows(start, stop)` inserts rows start..stop-1 with the ORM: the endpoint is measured, not the services
    that make rows. Every answer is checked to list every row, whole, before its time counts.
    """
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_superuser("bench", "bench@example.invalid", secrets.token_hex(16))
    client = APIClient()
    client.force_authenticate(user)

    def get(expected: int) -> int:
        """One request; returns the body's size after checking the answer is the full list."""
        response = client.get(endpoint.url)
        require(response.status_code == 200, f"GET {endpoint.url} answered {response.status_code}: {response.content[:300]!r}")
        rows = response.json()[endpoint.key]
        whole = all(len(row[name]) == count for row in rows for name, count in endpoint.children.items())
        require(len(rows) == expected and whole, "the list is not what was inserted")
        return len(response.content)

    figures = ListFigures(endpoint, requests)
    done = 0
    for size in sizes:
        add_rows(done, size)
        done = size
        require(model._default_manager.count() == size, "row count is off")
        get(size)  # warm-up: first-request imports and caches are not the endpoint's cost
        with CaptureQueriesContext(connection) as captured:
            figures.body[size] = get(size)
        # Read now: captured_queries slices connection.queries, which the next request's reset_queries empties.
        figures.queries[size] = len(captured.captured_queries)
        samples: list[float] = []
        for _ in range(requests):
            started = time.perf_counter()
            get(size)
            samples.append(time.perf_counter() - started)
        figures.medians[size], figures.fastest[size] = statistics.median(samples), min(samples)
        say(f"  {size} {endpoint.noun}s: median {figures.medians[size] * 1000:.1f} ms, {figures.queries[size]} queries")
    return figures
