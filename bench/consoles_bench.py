"""Benchmarks of the browser consoles and of the portal under a production server (issue 12).

These are measurements, not tests. The portal runs under uvicorn in a child
process (bench.console_server, `consoles_support.server_command`), on a fresh
SQLite database, against the real libvirtd, with TCG guests whose only code
is a boot sector echoing the serial port. Part 1: bytes/s through the console
websocket against a direct connection to the same byte source (a loopback TCP
source, and the real guest's VNC server sending full raw frames). Part 2: the
serial echo round trip through the websocket against the raw libvirt console
stream, to the same guest. Part 3: 50 consoles open in one server process,
its memory and CPU while idle. Part 4 (bench.consoles_load): 50 clients for
5 minutes against two workers.

Run:  flock /tmp/vapor-libvirt.lock .venv/bin/python -m bench.consoles_bench [--write] [--quick]
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bench.common import MB, Run, Section, Target, machine_facts, migrate, require, say, targets_section
from bench.consoles_load import load_section, load_targets, run_load
from bench.consoles_support import (
    HOST,
    MIB,
    PgDatabase,
    Portal,
    Server,
    check_daemon,
    free_port,
    open_console,
    remove_guests,
    running_domains,
    seed,
    setup_django,
    start_guests,
    ticket,
)

CAVEAT = (
    "pass/fail tests, against the real libvirtd shared with other work on this VM, client and server on its 2 vCPUs: "
    "compare within one run."
)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------
# Byte pipes: a socket or a console websocket, read the same way


class Pipe(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


class SocketPipe:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        return await self.reader.read(256 * 1024)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class WsPipe:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        message = await self.ws.receive()
        if message.type == aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        return b""

    async def write(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self) -> None:
        await self.ws.close()


class Buffered:
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.buffer = bytearray()
        self.received = 0

    async def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            data = await self.pipe.read()
            require(bool(data), "the console closed in the middle of an RFB message")
            self.received += len(data)
            self.buffer += data

    async def exactly(self, n: int) -> bytes:
        await self._fill(n)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def skip(self, n: int) -> None:
        while n:
            if not self.buffer:
                await self._fill(1)
            taken = min(n, len(self.buffer))
            del self.buffer[:taken]
            n -= taken


async def rfb_full_frames(pipe: Pipe, frames: int) -> tuple[int, float, str]:
    """RFB 3.8 with no authentication, raw encoding only; `frames` non-incremental full updates, one at a time.

    Returns the bytes of the updates, the seconds from the first request to the last update, and the frame size.
    """
    rfb = Buffered(pipe)
    require(await rfb.exactly(12) == b"RFB 003.008\n", "not an RFB 3.8 server")
    await pipe.write(b"RFB 003.008\n")
    types = await rfb.exactly((await rfb.exactly(1))[0])
    require(1 in types, f"the VNC server wants authentication ({list(types)})")
    await pipe.write(b"\x01")
    require(await rfb.exactly(4) == b"\0\0\0\0", "security handshake failed")
    await pipe.write(b"\x01")  # ClientInit: shared
    init = await rfb.exactly(24)
    width, height = struct.unpack(">HH", init[:4])
    bpp = init[4]
    await rfb.exactly(struct.unpack(">I", init[20:24])[0])
    await pipe.write(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw
    start_bytes, started = rfb.received - len(rfb.buffer), time.perf_counter()
    for _ in range(frames):
        await pipe.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        while True:
            kind = (await rfb.exactly(1))[0]
            if kind == 0:
                break
            require(kind == 2, f"unexpected RFB server message {kind}")  # 2: bell
        (rects,) = struct.unpack(">xH", await rfb.exactly(3))
        for _ in range(rects):
            _, _, w, h, encoding = struct.unpack(">HHHHi", await rfb.exactly(12))
            require(encoding == 0, f"encoding {encoding}, not raw")
            await rfb.skip(w * h * bpp // 8)
    seconds = time.perf_counter() - started
    return rfb.received - len(rfb.buffer) - start_bytes, seconds, f"{width}x{height}, {bpp} bpp"


# ---------------------------------------------------------------------------
# Part 1: bytes/s


@dataclass
class Ctx:
    server: Server
    portal: Portal
    session: aiohttp.ClientSession
    guests: list[str]
    fake: str
    source_port: int


async def read_source_direct(port: int) -> tuple[int, float]:
    def run() -> tuple[int, float]:
        buffer = bytearray(1024 * 1024)
        received = 0
        started = time.perf_counter()
        with socket.create_connection((HOST, port)) as sock:
            while n := sock.recv_into(buffer):
                received += n
        return received, time.perf_counter() - started

    return await asyncio.to_thread(run)


async def read_source_ws(ctx: Ctx, cpu: list[tuple[float, float]]) -> tuple[int, float]:
    """The source through the console; appends (server CPU s, client CPU s) of the run to `cpu`."""
    path = await ticket(ctx.session, ctx.server, ctx.portal, ctx.fake, "vnc")
    received = 0
    server_cpu, client_cpu = ctx.server.cpu_seconds(), process_cpu()
    started = time.perf_counter()
    ws = await open_console(ctx.session, ctx.server, path)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            received += len(message.data)
    seconds = time.perf_counter() - started
    cpu.append((ctx.server.cpu_seconds() - server_cpu, process_cpu() - client_cpu))
    return received, seconds


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def vnc_direct(name: str, frames: int) -> tuple[int, float, str]:
    from vms import hypervisor

    sock = await asyncio.to_thread(hypervisor.console_hypervisor().open_graphics, name)
    reader, writer = await asyncio.open_connection(sock=sock, limit=256 * 1024)
    pipe = SocketPipe(reader, writer)
    try:
        return await rfb_full_frames(pipe, frames)
    finally:
        await pipe.close()


async def vnc_ws(ctx: Ctx, name: str, frames: int) -> tuple[int, float, str]:
    path = await ticket(ctx.session, ctx.server, ctx.portal, name, "vnc")
    pipe = WsPipe(await open_console(ctx.session, ctx.server, path))
    try:
        return await rfb_full_frames(pipe, frames)
    finally:
        await pipe.close()


async def part_throughput(ctx: Ctx, pairs: int, source_mib: int, frames: int) -> tuple[list[Target], Section]:
    say(f"part 1: bytes/s, {pairs} pairs ({source_mib} MiB from the byte source, {frames} full VNC frames)")
    source = Target(
        1,
        f"bytes/s through the console websocket from a loopback TCP byte source ({source_mib} MiB per run)",
        "a direct TCP read of the same source",
        "MB/s",
        0.9,
        True,
    )
    vnc = Target(
        1,
        f"bytes/s through the console websocket from the guest's VNC server ({frames} full raw frames per run)",
        "the same frames over the socket `openGraphicsFD` gives",
        "MB/s",
        0.9,
        True,
    )
    frame = ""
    cpu: list[tuple[float, float]] = []
    for pair in range(pairs):
        direct_first = pair % 2 == 0
        got: dict[str, tuple[int, float]] = {}
        for side in ("direct", "ws") if direct_first else ("ws", "direct"):
            got[side] = await (read_source_direct(ctx.source_port) if side == "direct" else read_source_ws(ctx, cpu))
            require(got[side][0] == source_mib * MIB, f"{side}: {got[side][0]} bytes, not {source_mib} MiB")
        source.add(got["direct"][0] / got["direct"][1] / MB, got["ws"][0] / got["ws"][1] / MB)
        frames_got: dict[str, tuple[int, float, str]] = {}
        for side in ("direct", "ws") if direct_first else ("ws", "direct"):
            frames_got[side] = await (vnc_direct(ctx.guests[0], frames) if side == "direct" else vnc_ws(ctx, ctx.guests[0], frames))
        frame = frames_got["ws"][2]
        vnc.add(frames_got["direct"][0] / frames_got["direct"][1] / MB, frames_got["ws"][0] / frames_got["ws"][1] / MB)
        say(f"  pair {pair + 1}: source {source.ratios[-1]:.2f}x, vnc {vnc.ratios[-1]:.2f}x")
    section = Section(
        title="1. Bytes through the console",
        intro=(
            "Each run opens a fresh connection. The byte source is a process on 127.0.0.1 sending "
            f"{source_mib} MiB as fast as it is read: directly, the client reads it with `recv_into`; through the console, "
            "the server's bench-only hook points the console of a bench domain at it, and the client (aiohttp) gets a "
            "ticket (untimed), opens the websocket and reads binary frames until the console closes. Times run from the "
            f"connect to the last byte. VNC: the guest's screen ({frame}), RFB 3.8, raw encoding, {frames} non-incremental full "
            "updates requested one after the other (handshake untimed), over the socket libvirt's `openGraphicsFD` gives the "
            "bench process, and through the console websocket (which the server opens the same way)."
        ),
        header=["what", "median direct MB/s", "median websocket MB/s", "ratio min / median / max", "direct runs", "websocket runs"],
        rows=[
            [
                t.what.split(" (")[0].replace("bytes/s through the console websocket from ", ""),
                f"{statistics.median(t.baseline_samples):.0f}",
                f"{statistics.median(t.candidate_samples):.0f}",
                f"{min(t.ratios):.2f} / {statistics.median(t.ratios):.2f} / {max(t.ratios):.2f}",
                ", ".join(f"{s:.0f}" for s in t.baseline_samples),
                ", ".join(f"{s:.0f}" for s in t.candidate_samples),
            ]
            for t in (source, vnc)
        ],
    )
    gib = source_mib / 1024
    server_cpu = statistics.median(c[0] for c in cpu) / gib
    client_cpu = statistics.median(c[1] for c in cpu) / gib
    ws_seconds = 1024 * MIB / (statistics.median(source.candidate_samples) * MB)
    section.findings = [
        f"Through the console, per GiB from the byte source (medians): the server process used {server_cpu:.2f} CPU s and the "
        f"bench's client {client_cpu:.2f} CPU s, for {ws_seconds:.2f} s of wall time: with the source's own process, three "
        "busy processes share the 2 vCPUs. The direct read has no server and a client that only copies, so that ratio is "
        "the cost of the whole websocket hop (framing in the server, parsing in the client, one more copy each) on loopback, "
        "not of a network.",
        "The guest's VNC server answers a non-incremental request on QEMU's display refresh timer, not at once, so that "
        "row is paced by QEMU at the same rate on both paths: it shows what the console costs a real VNC session (nothing "
        "visible), not the bridge's ceiling.",
    ]
    return [source, vnc], section


# ---------------------------------------------------------------------------
# Part 2: serial echo round trip


async def rtt_raw(name: str, samples: int) -> list[float]:
    """Round trips over the libvirt console stream the bench process opens (the adapter the server uses)."""
    from vms import hypervisor

    stream = await asyncio.to_thread(hypervisor.console_hypervisor().open_serial, name, asyncio.get_running_loop())
    try:
        await _drain(stream.read)
        return await _round_trips(stream.write, stream.read, samples)
    finally:
        stream.close()


async def rtt_ws(ctx: Ctx, name: str, samples: int) -> list[float]:
    path = await ticket(ctx.session, ctx.server, ctx.portal, name, "serial")
    pipe = WsPipe(await open_console(ctx.session, ctx.server, path))
    try:
        await _drain(pipe.read)
        return await _round_trips(pipe.write, pipe.read, samples)
    finally:
        await pipe.close()


async def _drain(read: Any) -> None:
    """Read until nothing comes for 0.2 s (what the guest printed before the round trips)."""
    with contextlib.suppress(TimeoutError):
        while await asyncio.wait_for(read(), 0.2):
            pass


async def _round_trips(write: Any, read: Any, samples: int, warm: int = 10) -> list[float]:
    times = []
    for i in range(warm + samples):
        byte = bytes([97 + i % 26])
        started = time.perf_counter()
        await write(byte)
        echoed = await asyncio.wait_for(read(), 10)
        elapsed = time.perf_counter() - started
        require(echoed == byte, f"the echo sent {echoed!r} for {byte!r}")
        if i >= warm:
            times.append(elapsed)
    return times


async def rtt_echo_direct(samples: int) -> list[float]:
    from bench.console_server import EchoSerial

    echo = EchoSerial()
    return await _round_trips(echo.write, echo.read, samples)


@dataclass
class Rtt:
    raw: list[float] = field(default_factory=list)
    ws: list[float] = field(default_factory=list)
    added_p50: list[float] = field(default_factory=list)  # per pair, ms


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


async def part_rtt(ctx: Ctx, pairs: int, samples: int) -> tuple[dict[str, Any], Section]:
    say(f"part 2: serial echo round trip, {pairs} pairs of {samples}")
    real = Rtt()
    fake = Rtt()
    for pair in range(pairs):
        got: dict[str, list[float]] = {}
        for side in ("raw", "ws") if pair % 2 == 0 else ("ws", "raw"):
            got[side] = await (rtt_raw(ctx.guests[0], samples) if side == "raw" else rtt_ws(ctx, ctx.guests[0], samples))
            await asyncio.sleep(0.1)
        real.raw += got["raw"]
        real.ws += got["ws"]
        real.added_p50.append((statistics.median(got["ws"]) - statistics.median(got["raw"])) * 1000)
        fake_direct, fake_ws = await rtt_echo_direct(samples), await rtt_ws(ctx, ctx.fake, samples)
        fake.raw += fake_direct
        fake.ws += fake_ws
        fake.added_p50.append((statistics.median(fake_ws) - statistics.median(fake_direct)) * 1000)
        say(f"  pair {pair + 1}: raw p50 {ms(statistics.median(got['raw']))} ms, websocket {ms(statistics.median(got['ws']))} ms")

    def row(label: str, values: list[float]) -> list[str]:
        return [
            label,
            ms(percentile(values, 50)),
            ms(percentile(values, 90)),
            ms(percentile(values, 99)),
            ms(max(values)),
            str(len(values)),
        ]

    section = Section(
        title="2. Serial echo round trip",
        intro=(
            "One byte written, the same byte read back, one at a time. The echo comes from the guest itself: its boot sector "
            "answers every byte of its UART from the interrupt handler (QEMU 16550, pty, libvirt's console stream). Raw: "
            "the bench process opens the console stream (`openConsole` on libvirt's event loop, through the adapter the server "
            "uses) and writes and reads it; websocket: a ticket, then the console websocket, the server holding the stream. "
            "Sides alternate in each pair (each opening takes the port from the other). The last two rows isolate the bridge: "
            "the server's bench-only in-memory echo for a bench domain through the websocket, against the same echo object "
            f"called in the bench process. {pairs} pairs of {samples} round trips after 10 untimed ones; ms."
        ),
        header=["path", "p50 ms", "p90 ms", "p99 ms", "max ms", "samples"],
        rows=[
            row("guest echo, raw console stream", real.raw),
            row("guest echo, through the console websocket", real.ws),
            row("in-memory echo, called directly", fake.raw),
            row("in-memory echo, through the console websocket", fake.ws),
        ],
        findings=[
            f"Added by the websocket at p50 (per pair, websocket p50 minus raw p50): "
            f"{min(real.added_p50):.3f} / **{statistics.median(real.added_p50):.3f}** / {max(real.added_p50):.3f} ms (min / median / max); "
            f"the bridge alone (in-memory echo): {statistics.median(fake.added_p50):.3f} ms."
        ],
    )
    figures = {"real": real, "fake": fake}
    return figures, section


def rtt_target_row(real: Rtt) -> list[str]:
    added = statistics.median(real.added_p50)
    return [
        "2",
        "serial echo round trip through the console websocket, p50 (the guest echoes)",
        "the same over the raw libvirt console stream",
        "<= 1 ms added",
        f"{min(real.added_p50):.3f} / **{added:.3f}** / {max(real.added_p50):.3f} ms added (n={len(real.added_p50)})",
        f"{ms(statistics.median(real.raw))} vs {ms(statistics.median(real.ws))} ms",
        "met" if added <= 1.0 else "**missed**",
    ]


# ---------------------------------------------------------------------------
# Part 3: many consoles open in one process


async def part_many(workdir: Path, portal: Portal, guests: list[str], count: int, idle: float) -> tuple[list[list[str]], Section]:
    say(f"part 3: {count} VNC consoles open in a fresh server process, then {idle:.0f} s idle")
    server = Server(workdir).start()
    consoles: list[aiohttp.ClientWebSocketResponse] = []
    try:
        async with aiohttp.ClientSession() as session:
            warm = WsPipe(await open_console(session, server, await ticket(session, server, portal, guests[0], "vnc")))
            await Buffered(warm).exactly(12)
            await warm.close()
            await asyncio.sleep(2)
            before = server.rss_mib()
            cpu_before, clock = server.cpu_seconds(), time.perf_counter()
            await asyncio.sleep(idle)
            cpu_empty = server.cpu_seconds() - cpu_before
            empty_window = time.perf_counter() - clock
            for i in range(count):
                ws = await open_console(session, server, await ticket(session, server, portal, guests[i % len(guests)], "vnc"))
                require(await Buffered(WsPipe(ws)).exactly(12) == b"RFB 003.008\n", "no RFB banner")
                consoles.append(ws)
            await asyncio.sleep(2)
            after = server.rss_mib()
            cpu_before, clock = server.cpu_seconds(), time.perf_counter()
            await asyncio.sleep(idle)
            cpu = server.cpu_seconds() - cpu_before
            window = time.perf_counter() - clock
            still_open = sum(1 for ws in consoles if not ws.closed)
            for ws in consoles:
                await ws.close()
            await asyncio.sleep(2)
            closed = server.rss_mib()
    finally:
        server.stop()
    per = (after - before) / count
    tick = 1000 / os.sysconf("SC_CLK_TCK")  # ms: one clock tick of /proc/PID/stat
    rows = [
        [
            "3",
            f"{count} VNC consoles open at once in one server process ({len(guests)} guests)",
            "—",
            "<= 2 MiB each",
            f"**{per:.2f} MiB** each",
            f"RSS {before:.1f} -> {after:.1f} MiB",
            "met" if per <= 2 else "**missed**",
        ],
        [
            "3",
            f"server CPU while the {count} consoles and their guests are idle ({window:.0f} s)",
            "—",
            "no CPU (read: under 1 % of one CPU)",
            f"**{cpu * 1000 / window:.2f} ms/s** ({cpu * 1000:.0f} ms CPU)",
            f"{cpu_empty * 1000 / empty_window:.2f} ms/s with none open; {still_open} of {count} still open",
            "met" if cpu * 1000 / window <= 10 else "**missed**",
        ],
    ]
    section = Section(
        title="3. Consoles open at once",
        intro=(
            f"A fresh one-worker server; one console opened and closed to warm it, then {count} VNC consoles to "
            f"{len(guests)} running guests ({', '.join('`' + g + '`' for g in guests)}, in turn: QEMU's VNC server takes 32 clients "
            "at most), each past the RFB banner and then left alone. RSS is VmRSS of the server process 2 s after the last "
            f"one opened; CPU is its utime + stime from /proc/PID/stat (resolution {tick:.0f} ms) over {idle:.0f} s with the "
            "consoles open and nothing asked of the guests (the consoles' watcher checks their grants every 2 s meanwhile)."
        ),
        header=["figure", "value"],
        rows=[
            ["RSS before (MiB)", f"{before:.1f}"],
            [f"RSS with {count} open (MiB)", f"{after:.1f}"],
            ["per console (MiB)", f"{per:.2f}"],
            [f"CPU over {window:.0f} s idle (ms)", f"{cpu * 1000:.0f}"],
            [f"CPU over {empty_window:.0f} s idle with no console open, before (ms)", f"{cpu_empty * 1000:.0f}"],
            ["consoles still open at the end of the idle window", f"{still_open} of {count}"],
            ["RSS 2 s after closing them all (MiB)", f"{closed:.1f}"],
        ],
    )
    return rows, section


# ---------------------------------------------------------------------------


@dataclass
class Options:
    pairs: int
    source_mib: int
    frames: int
    rtt_samples: int
    consoles: int
    idle: float
    clients: int
    load_seconds: float
    warmup: float


QUICK = Options(pairs=3, source_mib=64, frames=20, rtt_samples=50, consoles=50, idle=5, clients=50, load_seconds=20, warmup=5)
FULL = Options(pairs=7, source_mib=512, frames=100, rtt_samples=300, consoles=50, idle=30, clients=50, load_seconds=300, warmup=30)


async def measure(workdir: Path, portal: Portal, guests: list[str], fake: str, opts: Options, parts: str) -> list[Section]:
    targets = targets_section([])
    sections: list[Section] = []
    if "1" in parts or "2" in parts:
        source_port = free_port()
        source = subprocess.Popen(
            [sys.executable, "-m", "bench.consoles_source", str(source_port), str(opts.source_mib)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        fakes = json.dumps({"graphics": {fake: f"{HOST}:{source_port}"}, "echo": [fake]})
        server = Server(workdir, extra_env={"VAPOR_BENCH_FAKE_CONSOLES": fakes})
        try:
            assert source.stdout is not None
            require(source.stdout.readline().strip() == b"ready", "the byte source did not start")
            server.start()
            async with aiohttp.ClientSession() as session:
                ctx = Ctx(server, portal, session, guests, fake, source_port)
                if "1" in parts:
                    throughput, bytes_section = await part_throughput(ctx, opts.pairs, opts.source_mib, opts.frames)
                    targets.rows += [t.row() for t in throughput]
                    sections.append(bytes_section)
                if "2" in parts:
                    rtt, rtt_section = await part_rtt(ctx, opts.pairs, opts.rtt_samples)
                    targets.rows.append(rtt_target_row(rtt["real"]))
                    sections.append(rtt_section)
        finally:
            server.stop()
            source.kill()
            source.wait()
    if "3" in parts:
        many_rows, many_section = await part_many(workdir, portal, guests, opts.consoles, opts.idle)
        targets.rows += many_rows
        sections.append(many_section)
    if "4" in parts:
        load = await run_load(workdir, portal, guests[0], opts.clients, opts.warmup, opts.load_seconds)
        targets.rows += load_targets(load)
        sections.append(load_section(load))
    targets.intro = (
        "Ratios are the websocket's figure over the direct path's, from pairs measured back to back (the order alternating); "
        "the result reads the median. Target 2 is the difference of the p50s within each pair. The parts below give the detail."
    )
    return [targets, *sections]


def others(prefix: str) -> list[str]:
    return [d for d in running_domains() if not d.startswith(prefix)]


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("consoles_bench", "browser consoles and the production server", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 pairs, 20 s of load: a check that it all runs (about 1 min)")
    parser.add_argument("--load-seconds", type=float, help="length of the load test (default 300, quick 20)")
    parser.add_argument("--pairs", type=int, help="pairs per ratio in parts 1 and 2 (default 7, quick 3)")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 4 for the load test alone (default 1234)")
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="a fresh PostgreSQL database on this server (e.g. postgres://postgres@127.0.0.1:5432), not SQLite",
    )
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"), help="parent of the work directory; QEMU must enter it")
    args = parser.parse_args(argv)
    opts = QUICK if args.quick else FULL
    if args.load_seconds:
        opts.load_seconds = args.load_seconds
    if args.pairs:
        opts.pairs = args.pairs

    check_daemon()
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-con-", dir=args.tmpdir))
    top.chmod(0o755)  # QEMU (libvirt-qemu) reads the guests' disks here
    prefix = "bench-con-" + secrets.token_hex(4)
    others_before = others(prefix)
    django_ready = False
    database = PgDatabase(args.pg) if args.pg else None
    try:
        if database is not None:
            database.create()
        setup_django(top, database.url if database else None)
        django_ready = True
        migrate(f"migrating a fresh {'PostgreSQL' if args.pg else 'SQLite'} database")
        say(f"starting the guests {prefix}-*")
        guests = start_guests(prefix, top, ["g1", "g2", "src"])
        time.sleep(3)  # SeaBIOS to the boot sector
        portal = seed(guests)
        sections = asyncio.run(measure(top, portal, guests[:2], guests[2], opts, args.parts))
        facts = [
            *machine_facts(top),
            (
                "other running domains (start / end)",
                f"{len(others_before)} / {len([d for d in running_domains() if not d.startswith(prefix)])}",
            ),
            ("load average at the end", " / ".join(Path("/proc/loadavg").read_text().split()[:3])),
        ]
    finally:
        remove_guests(prefix)
        if django_ready:
            from vms import hypervisor

            hypervisor.console_hypervisor().close()  # the bench's own console connection (parts 1-2)
            from django.db import connections

            connections.close_all()
        if database is not None:
            database.drop()
        shutil.rmtree(top, ignore_errors=True)
    method = (
        f"{'--quick: ' if args.quick else ''}{opts.pairs} pairs per ratio (parts 1-2), {opts.consoles} consoles and "
        f"{opts.idle:.0f} s idle (part 3), {opts.clients} clients for {opts.load_seconds:.0f} s after {opts.warmup:.0f} s of warm-up "
        "(part 4). The server is the product's `manage.py serve` (uvicorn, websockets-sansio, no compression), a child process on "
        f"127.0.0.1 with a fresh {'PostgreSQL' if args.pg else 'SQLite'} database; the client is aiohttp in the bench process. "
        "Guests are TCG domains "
        "`bench-con-...` removed at the end."
    )
    run.publish(run.render(method, facts, sections), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
