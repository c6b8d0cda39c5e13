"""Benchmarks of the API on PostgreSQL: issue 6's targets 6 (create-enhanced on a loaded database) and 7 (list pages).

These are measurements, not tests: nothing here fails because something is slow. Both targets are ratios measured
side by side in one run.

Target 6: POST create-enhanced (validate, plan, store, enqueue) with 1,000 VMs and 10,000 ISOs in the database,
against the same request on a database holding only the ISOs the requests name. Each database is served by its own
worker process (bench.api_worker); the two answer requests in turn, never at once. Every request has a fresh name
and names its ISO in one of five ways (library id, exact name, name in other case, absolute path, bare file name), so
each resolution rule runs against the big library. Validation asks the real libvirtd (qemu:///system) for the pool,
the network, the volume, the domain name and the host's capabilities: that is part of the request.

Target 7: the first page (100 rows) of the ISO list and of the VM list with 10,000 rows each, against a bare DRF
`ListAPIView` of the same queryset with the same page size (bench.api_list), in the loaded worker.

Needs PostgreSQL on 127.0.0.1:5432 with trust authentication for `postgres` (--pg to change) and libvirtd. The run
creates two databases named vapor_bench_<random>_{empty,loaded} and drops them at the end, whatever happened.

Run:  cd /work/main && .venv/bin/python -m bench.api_bench [--write]
Quick check:  .venv/bin/python -m bench.api_bench --isos 500 --vms 50 --list-rows 300 --rounds 2 --pairs 5 --list-requests 3
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api_report import create_section, list_section, method_text
from bench.common import PROJECT_ROOT, Run, Target, machine_facts, require, say, targets_section

CREATE_P50_LIMIT = 0.050  # target 6 also asks for p50 <= 50 ms
KINDS = ("id", "name", "name-case", "path", "filename")
URI = "qemu:///system"
BARE_ISOS = "/bench/bare/isos"  # target 7's baseline views (bench.api_list)
BARE_VMS = "/bench/bare/vms"


class Worker:
    """A bench.api_worker process on one database; `call` sends one command and returns its answer."""

    def __init__(self, role: str, database_url: str, workdir: Path) -> None:
        self.role = role
        data = workdir / role
        data.mkdir()
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="vaporsite.settings",
            DATABASE_URL=database_url,
            VAPOR_DATA_DIR=str(data),
            VAPOR_DEBUG="0",
            VAPOR_SECRET_KEY="bench-" + secrets.token_hex(24),
            VAPOR_SSL_REDIRECT="0",
            VAPOR_ALLOWED_HOSTS="testserver",
            VAPOR_ISO_DIRS=str(workdir / "iso"),
            VAPOR_ISO_DOWNLOAD_DIR=str(workdir / "iso"),
            VAPOR_LIBVIRT_URI=URI,
            VAPOR_Q_SYNC="0",
            VAPOR_LOG_LEVEL="WARNING",
        )
        self.log = workdir / f"{role}.log"  # Django's and django-q2's logs: shown only if the worker fails
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.api_worker"],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def call(self, op: str, **arguments: Any) -> Any:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        answer = json.loads(line) if line else {"ok": False, "error": "the process died"}
        if not answer["ok"]:
            tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            require(False, f"the {self.role} worker failed {op}:\n{answer['error']}\n--- its log ends:\n{tail}")
        return answer["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Databases:
    """This run's two PostgreSQL databases, made through psql on the server's `postgres` database and always dropped."""

    def __init__(self, server: str) -> None:
        self.server = server.rstrip("/")
        token = secrets.token_hex(4)
        self.empty, self.loaded = f"vapor_bench_{token}_empty", f"vapor_bench_{token}_loaded"
        self.made: list[str] = []

    def url(self, name: str) -> str:
        return f"{self.server}/{name}"

    def sql(self, statement: str) -> str:
        done = subprocess.run(
            ["psql", self.url("postgres"), "-v", "ON_ERROR_STOP=1", "-Atqc", statement],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        require(done.returncode == 0, f"psql failed on {statement!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create(self, name: str, template: str | None = None) -> None:
        self.sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.made.append(name)

    def drop_all(self) -> None:
        for name in reversed(self.made):
            self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.clear()


@dataclass(frozen=True)
class Reference:
    """An ISO the create requests name, in both databases: its library name differs from its file name, so a
    reference by file name is resolved by the filename rule, not the name rule."""

    id: str
    name: str
    path: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "path": self.path}

    def ref(self, kind: str) -> str:
        return {
            "id": self.id,
            "name": self.name,
            "name-case": self.name.upper(),
            "path": self.path,
            "filename": Path(self.path).name,
        }[kind]


def make_references(directory: Path, count: int) -> list[Reference]:
    directory.mkdir(parents=True)
    refs = []
    for k in range(count):
        path = directory / f"ubuntu-22.04.{k}-live-server-amd64.iso"
        path.write_bytes(b"\0" * 4096)  # only its existence is checked: the entry is already in the library
        refs.append(Reference(id=f"iso-a{k:011x}", name=f"Ubuntu 22.04.{k} LTS Server", path=str(path)))
    return refs


def request_body(name: str, iso: str) -> dict[str, Any]:
    """The spec's example 1 plus an ISO: one new 10 GB disk, a NIC on `default`, VNC, an osinfo variant."""
    return {
        "name": name,
        "memory": 1024,
        "vcpus": 1,
        "disks": [{"size": 10}],
        "iso_path": iso,
        "os_variant": "ubuntu22.04",
        "networks": [{"type": "nat", "source": "default"}],
        "graphics": {"type": "vnc", "port": -1},
    }


@dataclass
class CreateFigures:
    """Target 6's samples in seconds, per side and reference kind, and the SQL queries of one request of each."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {"empty": {}, "loaded": {}})
    queries: dict[str, dict[str, int]] = field(default_factory=lambda: {"empty": {}, "loaded": {}})

    def all(self, side: str) -> list[float]:
        return [s for samples in self.samples[side].values() for s in samples]


def bench_create(
    empty: Worker, loaded: Worker, refs: list[Reference], rounds: int, pairs: int, warmup: int
) -> tuple[Target, CreateFigures]:
    target = Target(
        6,
        "create-enhanced (validate, plan, enqueue), p50",
        "the same requests, database holding only the ISOs they name",
        "ms",
        1.5,
        higher_is_better=False,
    )
    figures = CreateFigures()
    tag = secrets.token_hex(3)
    counter = 0

    def body(kind: str) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        return request_body(f"bench-{tag}-{counter:05d}", refs[counter % len(refs)].ref(kind))

    say(f"target 6: {warmup} warm-up request(s) per kind and side, then query counts")
    for kind in KINDS:
        for _ in range(warmup):
            request = body(kind)
            empty.call("create", body=request)
            loaded.call("create", body=request)
        request = body(kind)
        for worker in (empty, loaded):
            figures.queries[worker.role][kind] = worker.call("create_queries", body=request)["queries"]
    for round_number in range(1, rounds + 1):
        per_side: dict[str, list[float]] = {"empty": [], "loaded": []}
        for pair in range(pairs):
            kind = KINDS[pair % len(KINDS)]
            request = body(kind)
            order = (empty, loaded) if (pair // len(KINDS) + round_number) % 2 else (loaded, empty)
            for worker in order:
                seconds = worker.call("create", body=request)["seconds"]
                per_side[worker.role].append(seconds)
                figures.samples[worker.role].setdefault(kind, []).append(seconds)
        p50_empty, p50_loaded = statistics.median(per_side["empty"]), statistics.median(per_side["loaded"])
        target.add(p50_empty * 1000, p50_loaded * 1000)
        ratio = p50_loaded / p50_empty
        say(f"  round {round_number}: p50 empty {p50_empty * 1000:.1f} ms, loaded {p50_loaded * 1000:.1f} ms, ratio {ratio:.2f}")
    p50 = statistics.median(figures.all("loaded"))
    target.extra_met = p50 <= CREATE_P50_LIMIT
    target.note = f"and p50 <= {CREATE_P50_LIMIT * 1000:.0f} ms: {p50 * 1000:.1f} ms"
    return target, figures


@dataclass(frozen=True)
class ListCase:
    label: str
    key: str
    url: str
    bare: str
    total: int


def bench_lists(loaded: Worker, isos: int, vms: int, rounds: int, requests: int) -> tuple[list[Target], dict[str, Any]]:
    cases = [
        ListCase("ISO list", "isos", "/api/v1/virtualmachines/isos?limit=100", BARE_ISOS + "?limit=100", isos),
        ListCase("VM list", "virtualmachines", "/api/v1/virtualmachines/?limit=100", BARE_VMS + "?limit=100", vms),
    ]
    targets, details = [], {}
    for case in cases:
        target = Target(
            7,
            f"GET {case.label}, first page of 100 ({case.total:,} rows)",
            "bare DRF ListAPIView, same queryset and page",
            "req/s",
            0.7,
            higher_is_better=True,
        )
        args = {"rows": 100, "total": case.total}
        product_q = loaded.call("get_queries", url=case.url, key=case.key, **args)["queries"]
        bare_q = loaded.call("get_queries", url=case.bare, key="results", **args)["queries"]
        times: dict[str, list[float]] = {"bare": [], "vapor": []}
        say(f"target 7: {case.label}, {rounds} rounds of {requests} request pairs")
        for round_number in range(1, rounds + 1):
            spent = {"bare": 0.0, "vapor": 0.0}
            for n in range(requests):
                order = ("bare", "vapor") if (n + round_number) % 2 else ("vapor", "bare")
                for side in order:
                    url, key = (case.bare, "results") if side == "bare" else (case.url, case.key)
                    seconds = loaded.call("get", url=url, key=key, repeat=1, **args)["samples"][0]
                    spent[side] += seconds
                    times[side].append(seconds)
            target.add(requests / spent["bare"], requests / spent["vapor"])
            say(f"  round {round_number}: bare {requests / spent['bare']:.1f} req/s, Vapor {requests / spent['vapor']:.1f} req/s")
        target.note = (
            f"SQL queries per page {product_q} (bare {bare_q}), the token lookup included; pinned in tests/test_list_pagination.py"
        )
        targets.append(target)
        details[case.label] = {"times": times, "queries": (bare_q, product_q), "url": case.url, "bare": case.bare}
    return targets, details


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def pg_version(databases: Databases) -> str:
    return databases.sql("SHOW server_version")


def main(argv: list[str] | None = None) -> int:
    run = Run(
        module="api_bench",
        title="API requests on PostgreSQL",
        caveat="pass/fail tests, on a PostgreSQL server and libvirtd shared with other work on this VM: compare within one run.",
        argv=argv,
    )
    parser = run.parser(__doc__)
    parser.add_argument("--isos", type=int, default=10_000, help="ISOs in the loaded database (target 6 and 7)")
    parser.add_argument("--vms", type=int, default=1_000, help="VMs in the loaded database for target 6")
    parser.add_argument("--list-rows", type=int, default=10_000, help="VMs in the loaded database for target 7")
    parser.add_argument("--refs", type=int, default=8, help="ISOs the create requests name (in both databases)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per target (one ratio each)")
    parser.add_argument("--pairs", type=int, default=40, help="create request pairs per round of target 6")
    parser.add_argument("--warmup", type=int, default=2, help="untimed create requests per reference kind and side")
    parser.add_argument("--list-requests", type=int, default=20, help="list request pairs per round of target 7")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL (no database name)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the run's files go (removed at the end)")
    parser.add_argument("--profile", type=Path, default=None, help="also write pyinstrument profiles of target 6 here")
    parser.add_argument("--skip-lists", action="store_true", help="only target 6")
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    require(args.list_rows >= args.vms and args.isos > args.refs, "--list-rows must be >= --vms and --isos > --refs")
    done = subprocess.run(["virsh", "-c", URI, "pool-info", "default"], capture_output=True, text=True, timeout=30, check=False)
    require(
        done.returncode == 0, f"libvirtd with a 'default' pool is needed on {URI}: {done.stderr.strip()} (bash scripts/libvirtd.sh start)"
    )

    databases = Databases(args.pg)
    try:
        databases.sql("SELECT 1")
    except RuntimeError as exc:
        hint = "scripts/test.sh starts the local cluster; --pg names another"
        raise RuntimeError(f"{exc}\nPostgreSQL must answer at {args.pg} ({hint})") from None
    before = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="vapor-api-bench-", dir=args.tmpdir))
    workers: list[Worker] = []
    try:
        refs = make_references(workdir / "iso", args.refs)
        say(f"databases {databases.empty} and {databases.loaded}: migrating, then seeding")
        databases.create(databases.empty)
        empty = Worker("empty", databases.url(databases.empty), workdir)
        workers.append(empty)
        empty.call("migrate")
        empty.call("login")
        empty.call("seed_refs", refs=[r.as_dict() for r in refs])
        empty.call("close")
        databases.create(databases.loaded, template=databases.empty)  # the same schema, user and reference ISOs
        loaded = Worker("loaded", databases.url(databases.loaded), workdir)
        workers.append(loaded)
        loaded.call("login")
        loaded.call("seed_isos", count=args.isos - args.refs)
        loaded.call("seed_vms", count=args.vms)
        for worker in workers:
            worker.call("analyze")
        seeded = {worker.role: worker.call("counts") for worker in workers}
        say(f"  seeded: {seeded}")
        target6, create_figures = bench_create(empty, loaded, refs, args.rounds, args.pairs, args.warmup)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for worker in workers:
                bodies = [request_body(f"bench-prof-{worker.role}-{n}", refs[n % len(refs)].ref(KINDS[n % len(KINDS)])) for n in range(50)]
                say(f"  profile: {worker.call('profile', bodies=bodies, path=str(args.profile / f'create-{worker.role}.txt'))['path']}")
        targets, sections = [target6], [create_section(create_figures, seeded, KINDS)]
        if not args.skip_lists:
            loaded.call("seed_vms", count=args.list_rows - args.vms)
            loaded.call("analyze")
            seeded["loaded, for target 7"] = loaded.call("counts")
            require(seeded["loaded, for target 7"]["vms"] == args.list_rows, "the VM table is not the size asked for")
            list_targets, list_details = bench_lists(loaded, args.isos, args.list_rows, args.rounds, args.list_requests)
            targets += list_targets
            sections.append(list_section(list_details, args.isos, args.list_rows))
        pg = pg_version(databases)
    finally:
        for worker in workers:
            worker.stop()
        databases.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    facts = [*machine_facts(workdir.parent), ("PostgreSQL", pg), ("load at start", before), ("load at end", load_average())]
    report = run.render(method_text(args), facts, [targets_section(targets), *sections])
    run.publish(report, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
