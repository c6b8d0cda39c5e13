"""A real Vapor back end for the fault tests: its own SQLite database and `qcluster` workers.

Built on the browser tests' portal (tests/browser/conftest.py: the same
environment and `manage.py` runner). A worker runs as `manage.py qcluster`
in a session of its own, so the whole cluster (the parent, its monitor, its
workers and any `qemu-img` they run) is one process group that a test can
SIGKILL at once, the way a crashed or OOM-killed host would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ROOT, _free_port, _manage, _portal_env, _tail, _wait_until_serving

__all__ = ["Backend", "_tail"]


class Backend:
    """`manage.py` commands and qclusters sharing one database and environment."""

    def __init__(self, data_dir: Path, iso_dir: Path, logs: Path, **extra_env: str) -> None:
        self.data_dir, self.logs = data_dir, logs
        self.env = _portal_env(data_dir, iso_dir)
        # The ISOs of these back ends live under pytest's 0700 directories and are never given to QEMU:
        # no check of what QEMU's user can reach (a test that needs it passes VAPOR_QEMU_USER).
        self.env["VAPOR_QEMU_USER"] = ""
        # Its `manage.py shell` calls the API with Django's test client, over plain HTTP as `testserver`
        # (a host name that is not loopback, which would switch the HTTPS redirect on with DEBUG off).
        self.env["VAPOR_SSL_REDIRECT"] = "0"
        self.env.update(extra_env)
        self.clusters: list[subprocess.Popen[bytes]] = []
        self.db_path = data_dir / "db.sqlite3"

    def migrate(self) -> None:
        _manage(self.env, self.logs, "migrate", "--noinput")

    def shell(self, code: str) -> str:
        """Run Python in `manage.py shell` against this back end; its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            pytest.fail(f"manage.py shell failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
        return result.stdout

    def start_cluster(self, queue: str | None = None) -> subprocess.Popen[bytes]:
        """A `qcluster` of the main queue, or of `queue` (Q_CLUSTER_NAME, as scripts/run.sh starts the downloads' one)."""
        log = self.logs / f"qcluster-{len(self.clusters) + 1}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env={**self.env, "Q_CLUSTER_NAME": queue} if queue else self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.clusters.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the cluster's whole process group: no handler, no `finally`, no acknowledgement."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def start_server(self) -> str:
        """`runserver` on a free loopback port (as scripts/run.sh); its base URL once it answers."""
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(self.logs / "runserver.log", "wb") as out:
            command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.clusters.append(process)  # stopped with the clusters
        _wait_until_serving(url, [process], self.logs)
        return url

    def stop_all(self) -> None:
        for process in self.clusters:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.db_path, timeout=30)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for process in self.clusters[-1:]:
                if process.poll() is not None and process.returncode != -signal.SIGKILL:
                    pytest.fail(f"qcluster exited with {process.returncode}\n{self.cluster_logs()}", pytrace=False)
            time.sleep(0.05)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.cluster_logs()}", pytrace=False)

    def cluster_logs(self) -> str:
        return "\n".join(_tail(p) for p in sorted(self.logs.glob("qcluster-*.log")))
