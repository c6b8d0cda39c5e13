"""Several portal machines (issue 15): two `qcluster`s on one Redis broker and one PostgreSQL database.

Two real `manage.py qcluster` processes, as two machines would run them
(VAPOR_Q_BROKER=redis, the same VAPOR_REDIS_URL, DATABASE_URL and
VAPOR_SECRET_KEY), share the test database of the PostgreSQL pass. A third
process (the web machine's part) queues 200 tasks; each records every run of
itself as a row (tests/support/scaleout.py). Every task must run exactly once,
and both clusters must have done some of them. Two django-q2 schedules due at
once must each fire once, though both clusters' schedulers look at them.

Isolation: a Redis database of its own (VAPOR_TEST_REDIS_URL, default
DB 15) and a cluster name of its own per run (Q_CLUSTER_NAME, so the queue key
and the schedules are this run's alone; Vapor's own schedules, which belong to
the cluster named `vapor`, are never run here). Its keys are deleted after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule

from tests.support.scaleout import CREATE_TABLE, TABLE
from tests.support.threads import in_threads

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("VAPOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TASKS = 200
TASK_SECONDS = 0.03
NODES = ("a", "b")
# django-q2's guard runs the scheduler about every 30 s after a cluster starts (cluster.py).
SCHEDULE_WAIT = 75.0


def _database_url() -> str:
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="") + (f":{quote(s['PASSWORD'], safe='')}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{quote(s['NAME'], safe='')}"


class Machines:
    """The processes of the portal's machines: one environment, a cluster name of this run's own."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.name = f"vapor-scaleout-{os.urandom(4).hex()}"
        self.logs = tmp_path
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("VAPOR_", "DJANGO_")) and k != "DATABASE_URL"}
        self.env = {
            **keep,
            "DATABASE_URL": _database_url(),
            "VAPOR_DATA_DIR": str(tmp_path / "data"),
            "VAPOR_SECRET_KEY": "scaleout-" + os.urandom(16).hex(),
            "VAPOR_VNC_KEY": "scaleout-vnc-" + os.urandom(16).hex(),
            "VAPOR_Q_BROKER": "redis",
            "VAPOR_REDIS_URL": redis_url,
            "VAPOR_Q_SYNC": "0",
            "VAPOR_Q_WORKERS": "2",
            "VAPOR_TASK_TIMEOUT": "60",
            "Q_CLUSTER_NAME": self.name,
            "PYTHONUNBUFFERED": "1",
        }
        self.clusters: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str, **extra: str) -> None:
        with open(self.logs / f"qcluster-{node}.log", "wb") as out:
            self.clusters[node] = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env={**self.env, "SCALEOUT_NODE": node, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def shell(self, code: str) -> None:
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def stop(self) -> dict[str, int]:
        """SIGTERM each cluster (what run.sh's Ctrl-C sends); their exit codes. A cluster that will not stop is killed."""
        codes: dict[str, int] = {}
        for process in self.clusters.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for node, process in self.clusters.items():
            try:
                codes[node] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                codes[node] = process.wait(timeout=10)
        return codes

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("qcluster-*.log")))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for node, process in self.clusters.items():
                if process.poll() is not None:
                    pytest.fail(f"qcluster {node} exited with {process.returncode}\n{self.logs_text()}", pytrace=False)
            time.sleep(0.1)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs_text()}", pytrace=False)


@pytest.fixture
def redis_client() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"no Redis answers at {REDIS_URL} (scripts/test.sh starts one): {exc}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def machines(tmp_path: Path, redis_client) -> Iterator[Machines]:
    assert connection.vendor == "postgresql", "run by the PostgreSQL pass of scripts/test.sh"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(CREATE_TABLE)
    machines = Machines(tmp_path, REDIS_URL)
    try:
        yield machines
    finally:
        machines.stop()
        for key in redis_client.scan_iter(match=f"django_q:{machines.name}:*"):
            redis_client.delete(key)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def _runs() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, node FROM {TABLE}")
        return [(key, node) for key, node in cursor.fetchall()]


def _pullers(redis_client) -> int:
    """Clients of this Redis database blocked on (or last seen pulling from) a queue: each started cluster's pusher is one."""
    db = str(redis_client.connection_pool.connection_kwargs.get("db", 0))
    return sum(1 for client in redis_client.client_list() if client.get("cmd") == "blpop" and client.get("db") == db)


def test_two_clusters_on_one_redis_run_each_task_once_and_each_schedule_once(machines: Machines, redis_client) -> None:
    start = time.monotonic()
    due = timezone.now() - timedelta(seconds=1)
    # Two schedules due now, of this run's cluster: one ONCE (deleted when it fires), one every minute.
    Schedule.objects.create(
        name="once", func="tests.support.scaleout.record", args="('schedule-once',)", schedule_type=Schedule.ONCE,
        repeats=-1, next_run=due, cluster=machines.name,
    )  # fmt: skip
    Schedule.objects.create(
        name="minutely", func="tests.support.scaleout.record", args="('schedule-minutely',)",
        schedule_type=Schedule.MINUTES, minutes=1, repeats=-1, next_run=due, cluster=machines.name,
    )  # fmt: skip
    before = _pullers(redis_client)
    for node in NODES:
        machines.start(node)
    machines.wait_for(lambda: _pullers(redis_client) >= before + len(NODES), 60, "both clusters to pull from Redis")
    started = time.monotonic() - start

    machines.shell(
        "from django_q.tasks import async_task\n"
        f"for i in range({TASKS}):\n"
        f"    async_task('tests.support.scaleout.record', f'task-{{i}}', {TASK_SECONDS})\n"
    )
    machines.wait_for(lambda: sum(1 for key, _ in _runs() if key.startswith("task-")) >= TASKS, 120, f"{TASKS} tasks")
    drained = time.monotonic() - start
    machines.wait_for(lambda: {k for k, _ in _runs()} >= {"schedule-once", "schedule-minutely"}, SCHEDULE_WAIT, "the schedules")
    time.sleep(3)  # a duplicate (the other cluster's scheduler, a redelivery) would land by now
    codes = machines.stop()

    runs = _runs()
    counts = Counter(key for key, _ in runs)
    assert sorted(k for k in counts if k.startswith("task-")) == sorted(f"task-{i}" for i in range(TASKS))
    assert {key: n for key, n in counts.items() if n != 1} == {}, "a task or a schedule ran more than once"
    per_node = Counter(node for key, node in runs if key.startswith("task-"))
    assert set(per_node) == set(NODES), f"only {dict(per_node)} did work"
    # The ONCE schedule is gone, the minutely one moved on: neither fires again.
    assert not Schedule.objects.filter(name="once").exists()
    assert Schedule.objects.get(name="minutely").next_run > timezone.now()
    assert codes == dict.fromkeys(NODES, 0), f"a cluster did not stop cleanly: {codes}\n{machines.logs_text()}"
    print(f"clusters pulling after {started:.1f} s, {TASKS} tasks done after {drained:.1f} s, per cluster {dict(per_node)}")


SCHEDULERS = 8


def test_racing_schedulers_fire_each_due_schedule_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps two machines' schedulers from both firing a schedule: the database, not the broker.

    django-q2's scheduler (django_q/scheduler.py) takes the due schedules with SELECT ... FOR UPDATE
    and moves them on (or deletes a ONCE one) in the same transaction; on PostgreSQL a second scheduler
    waits for that lock and then no longer sees the schedule as due. The clusters of the test above
    call their schedulers seconds apart; here eight run at the same instant (threads released together,
    each with its own connection), the tasks they create running inline (sync) so a duplicate shows
    at once.
    """
    from django_q.conf import Conf
    from django_q.scheduler import scheduler

    assert connection.vendor == "postgresql", "run by the PostgreSQL pass of scripts/test.sh"
    name = f"vapor-race-{os.urandom(4).hex()}"  # this test's schedules only, never Vapor's own
    monkeypatch.setattr(Conf, "CLUSTER_NAME", name)
    monkeypatch.setattr(Conf, "SYNC", True)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(CREATE_TABLE)
    try:
        due = timezone.now() - timedelta(seconds=1)
        keys = []
        for i in range(5):
            for kind, extra in (
                ("once", {"schedule_type": Schedule.ONCE}),
                ("minutely", {"schedule_type": Schedule.MINUTES, "minutes": 1}),
            ):
                key = f"{kind}-{i}"
                keys.append(key)
                Schedule.objects.create(
                    name=key, func="tests.support.scaleout.record", args=f"({key!r}, 0.05)", repeats=-1, next_run=due, cluster=name, **extra
                )
        assert in_threads(SCHEDULERS, lambda _: scheduler()) == []
        counts = Counter(key for key, _ in _runs())
        assert counts == dict.fromkeys(keys, 1)
        assert sorted(Schedule.objects.filter(cluster=name).values_list("name", flat=True)) == sorted(
            k for k in keys if k.startswith("minutely")
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
