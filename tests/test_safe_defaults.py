"""Safe defaults (issue 11, point 7): a kept random secret key, a VNC key of its
own, DEBUG off unless asked and never served beyond loopback."""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vaporsite import env
from vaporsite.management.commands import runserver

ROOT = Path(__file__).resolve().parent.parent


def clean_environ(**extra: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("VAPOR_", "DATABASE_URL"))}
    return {**kept, **extra}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the secret key -------------------------------------------------------


def test_without_a_key_one_is_made_and_kept_in_a_0600_file(tmp_path: Path) -> None:
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path / "var")})
    kept = tmp_path / "var" / env.SECRET_KEY_FILE
    assert config.problems == ()
    assert mode(kept) == 0o600
    assert kept.read_text().strip() == config.secret_key
    assert len(config.secret_key) >= 50 and not config.secret_key.startswith("django-insecure")
    # No temporary file is left beside it.
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([env.SECRET_KEY_FILE, env.VNC_KEY_FILE])


def test_the_kept_key_is_the_same_on_every_load(tmp_path: Path) -> None:
    environ = {"VAPOR_DATA_DIR": str(tmp_path)}
    keys = {env.load(environ).secret_key for _ in range(3)}
    assert len(keys) == 1
    assert env.load(environ).secret_key == (tmp_path / env.SECRET_KEY_FILE).read_text().strip()


def test_two_installs_never_share_a_key(tmp_path: Path) -> None:
    # The key that used to come with the repository was the same everywhere.
    first = env.load({"VAPOR_DATA_DIR": str(tmp_path / "a")}).secret_key
    second = env.load({"VAPOR_DATA_DIR": str(tmp_path / "b")}).secret_key
    assert first != second
    assert not hasattr(env, "DEV_SECRET_KEY")


def test_the_web_server_and_the_worker_read_the_same_key(tmp_path: Path) -> None:
    # Two processes, as run.sh starts them: the second must use what the first kept.
    code = "from django.conf import settings; print(settings.SECRET_KEY); print(settings.VAPOR.vnc_key)"
    answers = [
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
            cwd=ROOT,
            env=clean_environ(VAPOR_DATA_DIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split()
        for _ in range(2)
    ]
    assert answers[0] == answers[1] and len(answers[0]) == 2


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_SECRET_KEY": "from-the-environment-" + "q" * 40})
    assert config.secret_key == "from-the-environment-" + "q" * 40
    assert not (tmp_path / env.SECRET_KEY_FILE).exists()
    # Also over a file kept by an earlier start.
    (tmp_path / env.SECRET_KEY_FILE).write_text("kept-earlier\n")
    assert env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_SECRET_KEY": "given"}).secret_key == "given"
    assert env.load({"VAPOR_DATA_DIR": str(tmp_path)}).secret_key == "kept-earlier"


def test_debug_off_without_a_given_key_is_no_problem(tmp_path: Path) -> None:
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_DEBUG": "0"})
    assert config.problems == () and config.debug is False


def test_an_unusable_key_file_is_a_problem_naming_the_variable_and_the_file(tmp_path: Path) -> None:
    (tmp_path / env.SECRET_KEY_FILE).write_text("\n")
    (tmp_path / env.VNC_KEY_FILE).mkdir()
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path)})
    problems = {p.variable: p.message for p in config.problems}
    assert set(problems) == {"VAPOR_SECRET_KEY", "VAPOR_VNC_KEY"}
    assert str(tmp_path / env.SECRET_KEY_FILE) in problems["VAPOR_SECRET_KEY"] and "empty" in problems["VAPOR_SECRET_KEY"]
    assert str(tmp_path / env.VNC_KEY_FILE) in problems["VAPOR_VNC_KEY"]
    # The process still has keys of its own, never an empty one.
    assert config.secret_key and config.vnc_key


# --- the VNC key ----------------------------------------------------------


def test_the_vnc_key_is_its_own_0600_file_and_not_the_secret_key(tmp_path: Path) -> None:
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path)})
    kept = tmp_path / env.VNC_KEY_FILE
    assert mode(kept) == 0o600 and kept.read_text().strip() == config.vnc_key
    assert config.vnc_key != config.secret_key
    given = env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_VNC_KEY": "vnc-from-the-environment"})
    assert given.vnc_key == "vnc-from-the-environment"


def test_changing_the_secret_key_keeps_vnc_passwords_readable(settings) -> None:
    from vms import encryption

    settings.SECRET_KEY = "first-" + "a" * 50
    token = encryption.encrypt("pa55word")
    settings.SECRET_KEY = "second-" + "b" * 50
    assert encryption.decrypt(token) == "pa55word"
    # ...and the VNC key is what the token depends on.
    settings.VAPOR = dataclasses.replace(settings.VAPOR, vnc_key="another-vnc-key")
    assert encryption.decrypt(token) is None


# --- DEBUG ----------------------------------------------------------------


def test_debug_is_off_unless_asked(tmp_path: Path) -> None:
    assert env.load({"VAPOR_DATA_DIR": str(tmp_path)}).debug is False
    assert env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_DEBUG": "1"}).debug is True


def test_https_settings_follow_the_host_names(tmp_path: Path) -> None:
    # DEBUG is off by default now, so the HTTPS switches are on whenever
    # settings.py applies them: on loopback only (the run command serves plain
    # HTTP there) they must default to off, under a host name of its own to on.
    local = env.load({"VAPOR_DATA_DIR": str(tmp_path)})
    assert (local.ssl_redirect, local.secure_cookies) == (False, False)
    public = env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_ALLOWED_HOSTS": "127.0.0.1,vapor.example.com"})
    assert (public.ssl_redirect, public.secure_cookies) == (True, True)
    chosen = env.load({"VAPOR_DATA_DIR": str(tmp_path), "VAPOR_ALLOWED_HOSTS": "vapor.example.com", "VAPOR_SSL_REDIRECT": "0"})
    assert (chosen.ssl_redirect, chosen.secure_cookies) == (False, True)


def runserver_process(address: str, tmp_path: Path, **environ: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "runserver", address, "--noreload", "--skip-checks"],
        cwd=ROOT,
        env=clean_environ(VAPOR_DATA_DIR=str(tmp_path), **environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("address", ["0.0.0.0:0", "0:0", "[::]:0", "192.0.2.10:0"])
def test_the_server_refuses_debug_on_an_address_that_is_not_loopback(tmp_path: Path, address: str) -> None:
    process = runserver_process(address, tmp_path, VAPOR_DEBUG="1")
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()  # a server that did not refuse would serve on until the end of time
        process.wait(timeout=30)
    assert process.returncode != 0
    shown = {"0:0": "0.0.0.0", "[::]:0": "::", "192.0.2.10:0": "192.0.2.10"}.get(address, "0.0.0.0")
    assert "VAPOR_DEBUG" in stderr and f"listen on {shown}," in stderr and "loopback" in stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_server_serves_debug_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    process = runserver_process(f"127.0.0.1:{port}", tmp_path, VAPOR_DEBUG="1")
    try:
        answer = None
        for _ in range(600):  # waits for the server to come up; no time is asserted
            if process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/", timeout=5) as response:
                    answer = response.status
            except urllib.error.HTTPError as exc:
                answer = exc.code
            except OSError:
                time.sleep(0.1)
                continue
            break
        assert process.poll() is None, process.communicate()[1]
        assert answer is not None and answer < 500
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_debug_off_may_listen_anywhere(monkeypatch, settings) -> None:
    settings.DEBUG = False
    started: list[str] = []
    monkeypatch.setattr(runserver.StaticfilesRunserver, "run", lambda self, **options: started.append(self.addr))
    command = runserver.Command()
    command.addr = "0.0.0.0"
    command.run(use_reloader=False)
    assert started == ["0.0.0.0"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert runserver.is_loopback(host) is loopback
