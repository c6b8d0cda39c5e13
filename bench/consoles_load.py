"""Part 4 of bench.consoles_bench: the portal under load, uvicorn with two workers.

`clients` asyncio clients (aiohttp, one keep-alive connection each) loop over four requests in turn, each
starting at a different one: the VM list, a VM's detail, a dry-run create-enhanced (validated against the
real libvirtd: pool, network, capabilities, names) and a console ticket for a running guest. The first
`warmup` seconds are not counted; the RSS of the worker processes is read at the end of the warm-up and
every tenth of the measured window, the last time just before the clients stop.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Section, say
from bench.consoles_support import Portal, Server

KINDS = ("list", "detail", "dry-run create", "console ticket")
EXPECTED = {"list": 200, "detail": 200, "dry-run create": 200, "console ticket": 201}


@dataclass
class LoadFigures:
    clients: int
    warmup: float
    seconds: float = 0.0
    times: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    slow: list[tuple[float, float, str]] = field(default_factory=list)  # (started, seconds into the window; seconds; kind) > 1 s
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the measured window, MiB over the workers)
    workers: int = 0
    warmup_requests: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    @property
    def unexpected(self) -> int:
        return sum(n for (kind, status), n in self.statuses.items() if status != EXPECTED[kind] and status < 500)

    @property
    def total(self) -> int:
        return sum(len(t) for t in self.times.values())

    @property
    def growth(self) -> float:
        return self.rss[-1][1] / self.rss[0][1] - 1


def request(kind: str, portal: Portal, vm_id: int, serial: int) -> tuple[str, str, dict[str, Any] | None]:
    if kind == "list":
        return "GET", "/api/v1/virtualmachines/", None
    if kind == "detail":
        return "GET", f"/api/v1/virtualmachines/{vm_id}", None
    if kind == "dry-run create":
        body = {
            "name": f"bench-con-dry-{serial}",
            "memory": 256,
            "vcpus": 1,
            "disks": [{"size": 1}],
            "networks": [{"type": "nat", "source": "default"}],
            "graphics": {"type": "vnc"},
        }
        return "POST", "/api/v1/virtualmachines/create-enhanced?dry_run=true", body
    return "POST", f"/api/v1/virtualmachines/{vm_id}/console", {"type": "vnc"}


async def run_load(workdir: Path, portal: Portal, guest: str, clients: int, warmup: float, seconds: float) -> LoadFigures:
    say(f"part 4: {clients} clients, {warmup:.0f} s warm-up then {seconds:.0f} s, two workers")
    figures = LoadFigures(clients=clients, warmup=warmup)
    server = Server(workdir, workers_wanted=2).start()
    figures.workers = len(server.workers())
    vm_id = portal.vm_ids[guest]
    serials = itertools.count()
    measuring = False
    stopping = False
    window_start = 0.0
    samples_done = asyncio.Event()

    async def client(session: aiohttp.ClientSession, first: int) -> None:
        for n in itertools.count(first):
            if stopping:
                return
            kind = KINDS[n % len(KINDS)]
            method, path, body = request(kind, portal, vm_id, next(serials))
            started = time.perf_counter()
            try:
                async with session.request(method, server.base + path, json=body, headers=portal.headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if not stopping:
                    figures.errors[type(exc).__name__] += 1
                continue
            if measuring and not stopping:
                elapsed = time.perf_counter() - started
                figures.times[kind].append(elapsed)
                if elapsed > 1:
                    figures.slow.append((started - window_start, elapsed, kind))
                figures.statuses[kind, status] += 1
            elif not measuring:
                figures.warmup_requests += 1

    async def sampler() -> None:
        nonlocal measuring, stopping, window_start
        await asyncio.sleep(warmup)
        measuring = True
        started = window_start = time.perf_counter()
        figures.rss.append((0.0, server.rss_mib()))
        for tenth in range(1, 11):
            await asyncio.sleep(max(0.0, started + seconds * tenth / 10 - time.perf_counter()))
            figures.rss.append((time.perf_counter() - started, server.rss_mib()))
        figures.seconds = time.perf_counter() - started
        stopping = True
        samples_done.set()

    try:
        sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=60)) for _ in range(clients)
        ]
        try:
            tasks = [asyncio.create_task(client(s, i)) for i, s in enumerate(sessions)]
            await sampler()
            await asyncio.wait(tasks, timeout=70)
        finally:
            for session in sessions:
                await session.close()
    finally:
        server.stop()
    say(f"  {figures.total} requests, {figures.server_errors} 5xx, {sum(figures.errors.values())} connection errors")
    return figures


def p(samples: list[float], q: int) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000 if ordered else float("nan")


def load_targets(figures: LoadFigures) -> list[list[str]]:
    errors = sum(figures.errors.values())
    return [
        [
            "4",
            f"{figures.clients} clients for {figures.seconds:.0f} s: list, detail, dry-run creates, console tickets",
            "—",
            "no 5xx, no connection error",
            f"**{figures.server_errors}** 5xx, **{errors}** connection errors of {figures.total} requests",
            f"{figures.total / figures.seconds:.1f} req/s",
            "met" if figures.server_errors == 0 and errors == 0 else "**missed**",
        ],
        [
            "4",
            f"RSS of the {figures.workers} workers at the end against after the warm-up",
            "after warm-up",
            "within 10 %",
            f"**{figures.growth:+.1%}**",
            f"{figures.rss[0][1]:.1f} vs {figures.rss[-1][1]:.1f} MiB",
            "met" if abs(figures.growth) <= 0.10 else "**missed**",
        ],
    ]


def slow_finding(figures: LoadFigures) -> str:
    """How many requests took over a second, and when: stalls show as clusters of start times."""
    if not figures.slow:
        return "No request took more than 1 s."
    by_kind = Counter(kind for _, _, kind in figures.slow)
    worst = sorted(figures.slow, key=lambda s: -s[1])[:5]
    seconds = sorted({int(at) for at, _, _ in figures.slow})
    return (
        f"{len(figures.slow)} requests took more than 1 s ({', '.join(f'{k}: {n}' for k, n in by_kind.items())}); the slowest "
        + ", ".join(f"{kind} {took:.1f} s started at {at:.0f} s" for at, took, kind in worst)
        + f"; they started in {len(seconds)} distinct seconds of the window."
    )


def load_section(figures: LoadFigures) -> Section:
    rows = []
    for kind in KINDS:
        samples = figures.times[kind]
        statuses = ", ".join(f"{status}: {n}" for (k, status), n in sorted(figures.statuses.items()) if k == kind)
        rows.append(
            [
                kind,
                str(len(samples)),
                f"{len(samples) / figures.seconds:.1f}",
                f"{p(samples, 50):.1f}",
                f"{p(samples, 99):.1f}",
                f"{max(samples) * 1000:.0f}" if samples else "",
                statuses,
            ]
        )
    everything = [t for kind in KINDS for t in figures.times[kind]]
    rows.append(
        [
            "**all**",
            str(len(everything)),
            f"{len(everything) / figures.seconds:.1f}",
            f"{p(everything, 50):.1f}",
            f"{p(everything, 99):.1f}",
            f"{max(everything) * 1000:.0f}" if everything else "",
            f"5xx: {figures.server_errors}, other unexpected: {figures.unexpected}",
        ]
    )
    series = ", ".join(f"{at:.0f} s: {mib:.1f}" for at, mib in figures.rss)
    section = Section(
        title="4. The portal under load",
        intro=(
            f"uvicorn with {figures.workers} workers (the supervisor not counted), {figures.clients} aiohttp clients in the bench "
            "process, each on one keep-alive connection with token authentication, looping over the four requests in turn "
            f"(each client starting at a different one). {figures.warmup:.0f} s of warm-up ({figures.warmup_requests} requests, "
            f"not counted), then {figures.seconds:.0f} s measured. A dry-run create validates against the real libvirtd "
            "(its own connection per request) inside a transaction it rolls back; a detail request reads the domain's state "
            "and writes it to the row; a ticket writes its row and an audit row. The client shares the machine's 2 vCPUs with "
            "the server."
        ),
        header=["request", "count", "req/s", "p50 ms", "p99 ms", "max ms", "statuses"],
        rows=rows,
        findings=[
            f"Connection errors: {sum(figures.errors.values())}"
            + (f" ({', '.join(f'{k}: {n}' for k, n in figures.errors.items())})" if figures.errors else "")
            + ".",
            f"RSS over the workers (MiB) through the measured window: {series}; at the end "
            f"{figures.growth:+.1%} against after the warm-up.",
            slow_finding(figures),
            f"Median over all requests: {statistics.median(everything) * 1000:.1f} ms." if everything else "No request completed.",
        ],
    )
    return section
