"""Configuration from the environment and the system checks that explain it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaporsite import env

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_documented_ones() -> None:
    config = env.load({})
    assert config.libvirt_uri == "qemu:///system"
    assert [str(p) for p in config.iso_dirs] == ["/var/lib/libvirt/images/iso", "/var/lib/vapor/iso", "/usr/share/iso"]
    assert str(config.download_dir) == "/var/lib/vapor/iso"
    assert config.download_allow_private is False
    assert config.database["ENGINE"] == "django.db.backends.sqlite3"
    assert str(config.database["NAME"]).endswith("var/vapor.sqlite3")
    assert config.problems == ()


def test_database_url_selects_postgresql() -> None:
    config = env.load({"DATABASE_URL": "postgres://vapor@db.internal:5432/vapor"})
    assert config.database["ENGINE"] == "django.db.backends.postgresql"
    assert (config.database["HOST"], config.database["NAME"]) == ("db.internal", "vapor")


def test_allowed_roots_join_search_dirs_download_dir_and_extra_roots() -> None:
    config = env.load({"VAPOR_ISO_DIRS": "/a:/b", "VAPOR_ISO_DOWNLOAD_DIR": "/d", "VAPOR_ISO_ROOTS": "/e:/a"})
    assert [str(p) for p in config.allowed_iso_roots] == ["/a", "/b", "/d", "/e"]


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("VAPOR_ISO_DIRS", "relative/dir", "not an absolute path"),
        ("VAPOR_ISO_DOWNLOAD_DIR", "isos", "must be an absolute path"),
        ("VAPOR_DOWNLOAD_ALLOW_PRIVATE", "maybe", "is not a boolean"),
        ("VAPOR_DEBUG", "sometimes", "is not a boolean"),
        ("VAPOR_DOWNLOAD_MAX_BYTES", "lots", "is not a whole number"),
        ("VAPOR_DOWNLOAD_ALLOWED_NETWORKS", "10.0.0.0/33", "is not a comma-separated list of networks"),
        ("DATABASE_URL", "mongo://x/y", "is not a database URL"),
        ("VAPOR_LOG_LEVEL", "LOUD", "is not one of"),
        ("VAPOR_MAX_DISK_GB", "0", "must be at least 1"),
        ("VAPOR_MAX_DISK_GB", str(2**31), "must be at most 2147483647"),
        ("VAPOR_MEMORY_OVERCOMMIT", "0", "is not a ratio"),
        ("VAPOR_MEMORY_OVERCOMMIT", "nan", "is not a ratio"),
        ("VAPOR_CPU_OVERCOMMIT", "lots", "is not a ratio"),
        ("VAPOR_MAX_DISKS", "257", "must be at most 256"),
        ("VAPOR_MAX_NICS", "0", "must be at least 1"),
        ("VAPOR_MAX_BODY_BYTES", "100", "must be at least 1024"),
        ("VAPOR_Q_BROKER", "rabbitmq", "is not one of orm, redis"),
        ("VAPOR_REDIS_URL", "http://127.0.0.1:6379/0", "the scheme must be redis://"),
        ("VAPOR_REDIS_URL", "redis://127.0.0.1:6379/zero", "the database 'zero' is not a number"),
        ("VAPOR_REDIS_URL", "redis://127.0.0.1:99999/0", "is not a Redis URL"),
    ],
)
def test_a_bad_value_is_reported_with_its_variable_and_falls_back(variable: str, value: str, words: str) -> None:
    config = env.load({variable: value})
    assert len(config.problems) == 1
    problem = config.problems[0]
    assert problem.variable == variable and words in problem.message


def q_cluster(**environ: str) -> dict[str, object]:
    """settings.Q_CLUSTER as a process started with `environ` (and no other VAPOR_ variable) reads it."""
    result = manage(
        "shell", "-v", "0", "-c", "import json; from django.conf import settings; print(json.dumps(settings.Q_CLUSTER))", **environ
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_the_orm_broker_is_the_default_and_redis_is_chosen_by_the_environment() -> None:
    config = env.load({})
    assert (config.q_broker, config.redis_url) == ("orm", "redis://127.0.0.1:6379/0")
    default = q_cluster()
    assert default["orm"] == "default" and "redis" not in default
    chosen = q_cluster(VAPOR_Q_BROKER="Redis", VAPOR_REDIS_URL="redis://:s3cret@queue.internal:6380/3")
    assert chosen["redis"] == "redis://:s3cret@queue.internal:6380/3" and "orm" not in chosen
    # Everything else is the same, the downloads' queue included.
    assert {k: v for k, v in chosen.items() if k != "redis"} == {k: v for k, v in default.items() if k != "orm"}
    assert chosen["ALT_CLUSTERS"] == {"vapor-downloads": {"workers": 2}}
    assert env.load({"VAPOR_REDIS_URL": "unix:///run/redis/redis.sock?db=2"}).problems == ()


def test_a_bad_redis_url_is_reported_without_its_password() -> None:
    config = env.load({"VAPOR_REDIS_URL": "redis://:s3cret@queue.internal:port/0"})
    [problem] = config.problems
    assert problem.variable == "VAPOR_REDIS_URL" and "s3cret" not in problem.message
    assert config.redis_url == "redis://127.0.0.1:6379/0"


def test_manage_check_names_a_bad_broker() -> None:
    result = manage("check", VAPOR_Q_BROKER="rabbitmq")
    assert result.returncode != 0
    assert "vapor.E001" in result.stderr and "VAPOR_Q_BROKER 'rabbitmq' is not one of orm, redis" in result.stderr


def manage(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAPOR_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **environ}, capture_output=True, text=True, timeout=120
    )


def test_manage_check_names_the_bad_variable() -> None:
    result = manage("check", VAPOR_ISO_DIRS="not/absolute")
    assert result.returncode != 0
    assert "vapor.E001" in result.stderr and "VAPOR_ISO_DIRS" in result.stderr


def test_check_deploy_is_clean_when_production_settings_are_given() -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        VAPOR_DEBUG="0",
        VAPOR_SECRET_KEY="k3y-" + "x7Qp9vL2mZ4rT8wB1nC6yF0hJ5sD3gK" * 2,
        VAPOR_ALLOWED_HOSTS="vapor.example.com",
    )
    assert result.returncode == 0, result.stderr + result.stdout
