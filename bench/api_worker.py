"""A worker process of bench.api_bench: one Django on one PostgreSQL database, obeying commands from its parent.

Targets 6 and 7 compare requests against two databases (an empty one and a loaded one) measured in interleaved
pairs. Django's settings are read once per process, so each database gets its own process, started by the parent
with the database's URL in its environment; the parent alternates between the two, so they never run at the same
time. Commands and answers are JSON lines on the process's stdin and its original stdout; everything else the
process prints (Django's and django-q2's logs) goes to stderr.

Requests go through DRF's test client with a token header, so the whole stack runs (middleware, authentication,
permissions, the view, the services, libvirt on qemu:///system, the ORM broker's INSERT of the task). The task is
not run: django-q2 is asynchronous here (VAPOR_Q_SYNC=0) and no cluster is started. After each create request,
outside the timed part, the VM and the queued task are deleted, so the empty database stays empty.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import api_seed

PROTOCOL = sys.stdout


class Worker:
    def __init__(self) -> None:
        import django

        django.setup()
        from django.conf import settings

        settings.ROOT_URLCONF = "bench.api_list"  # Vapor's URLs plus the bare DRF views of target 7
        self.client: Any = None

    # --- set-up ---------------------------------------------------------------

    def migrate(self) -> None:
        import io

        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0, stdout=io.StringIO())

    def close(self) -> None:
        """Close every connection: the parent copies this database as a template, which needs it unused."""
        from django.db import connections

        connections.close_all()

    def login(self) -> None:
        """A superuser and its API token (the user exists in both databases: it was made before the copy)."""
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token
        from rest_framework.test import APIClient

        user_model = get_user_model()
        user = user_model.objects.filter(username="bench").first()
        user = user or user_model.objects.create_superuser("bench", "bench@example.invalid", os.urandom(12).hex())
        token, _ = Token.objects.get_or_create(user=user)
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    def seed_refs(self, refs: list[dict[str, str]]) -> None:
        api_seed.add_reference_isos(refs)

    def seed_isos(self, count: int) -> None:
        api_seed.add_library(count)

    def seed_vms(self, count: int) -> None:
        api_seed.add_vms(count)

    def counts(self) -> dict[str, int]:
        return api_seed.counts()

    def analyze(self) -> None:
        """Fresh planner statistics after the bulk inserts, as autovacuum would give them a little later."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    # --- target 6 ---------------------------------------------------------------

    def _post(self, body: dict[str, Any]) -> tuple[float, Any]:
        started = time.perf_counter()
        response = self.client.post("/api/v1/virtualmachines/create-enhanced", body, format="json")
        return time.perf_counter() - started, response

    @staticmethod
    def _forget(name: str, response: Any) -> None:
        """Check the request did what it should, then delete the VM and its queued task (untimed)."""
        from django_q.models import OrmQ

        from vms.models import VirtualMachine

        if response.status_code != 202:
            raise RuntimeError(f"create-enhanced answered {response.status_code}: {response.content[:400]!r}")
        vm = response.json()
        cdroms = vm["cdroms"]
        if vm["name"] != name or vm["status"] != "provisioning" or len(cdroms) != 1 or not cdroms[0]["iso_id"]:
            raise RuntimeError(f"unexpected VM in the answer: {vm}")
        queued = OrmQ.objects.all()
        if queued.count() != 1:
            raise RuntimeError(f"expected one queued task, found {queued.count()}")
        queued.delete()
        VirtualMachine.objects.filter(pk=vm["id"]).delete()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds, response = self._post(body)
        self._forget(body["name"], response)
        return {"seconds": seconds}

    def create_queries(self, body: dict[str, Any]) -> dict[str, Any]:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            _, response = self._post(body)
        self._forget(body["name"], response)
        return {"queries": len(captured.captured_queries), "sql": [q["sql"] for q in captured.captured_queries]}

    def profile(self, bodies: list[dict[str, Any]], path: str) -> dict[str, Any]:
        """pyinstrument over `bodies` (only for investigating a miss; the package is not a requirement)."""
        import importlib

        profiler = importlib.import_module("pyinstrument").Profiler(interval=0.0005)
        profiler.start()
        for body in bodies:
            _, response = self._post(body)
            profiler.stop()
            self._forget(body["name"], response)
            profiler.start()
        profiler.stop()
        with open(path, "w") as out:
            out.write(profiler.output_text(unicode=False, color=False, show_all=False))
        return {"path": path}

    # --- target 7 ---------------------------------------------------------------

    def _get(self, url: str, key: str, rows: int, total: int) -> float:
        started = time.perf_counter()
        response = self.client.get(url)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}: {response.content[:300]!r}")
        body = response.json()
        if len(body[key]) != rows or body["count"] != total or not body["next"]:
            raise RuntimeError(f"GET {url}: {len(body[key])} rows of {body['count']}, not {rows} of {total}")
        return elapsed

    def get(self, url: str, key: str, rows: int, total: int, repeat: int) -> dict[str, Any]:
        return {"samples": [self._get(url, key, rows, total) for _ in range(repeat)]}

    def get_queries(self, url: str, key: str, rows: int, total: int) -> dict[str, Any]:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            self._get(url, key, rows, total)
        return {"queries": len(captured.captured_queries)}


def serve() -> None:
    """Answer commands until `quit`: each line {"op": name, ...arguments} gets {"ok": true, "result": ...}."""
    global PROTOCOL
    PROTOCOL = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # stray prints and logs must not break the protocol
    worker = Worker()
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        method: Callable[..., Any] = getattr(worker, op)
        try:
            answer = {"ok": True, "result": method(**command)}
        except Exception:  # reported to the parent, which stops the run with it
            answer = {"ok": False, "error": traceback.format_exc()}
        PROTOCOL.write(json.dumps(answer) + "\n")
    worker.close()


if __name__ == "__main__":
    serve()
