#!/usr/bin/env bash
# The test command: the run command's set-up, then the whole suite.
#
#   bash scripts/test.sh [PYTEST ARGS...]      (or: make test ARGS="...")
#
# Two passes, both must pass:
#   1. everything not marked `postgres`, on SQLite (incl. the real-libvirtd,
#      multi-host and browser tiers), in two parts run side by side (see
#      "lanes" below);
#   2. on PostgreSQL at 127.0.0.1:5432 (started here if it does not answer),
#      with Redis at 127.0.0.1:6379 (likewise) for the scale-out test's
#      brokers (tests/test_scaleout_pg.py):
#      what PostgreSQL can change: the `postgres`-marked tests (concurrency,
#      locking) and every other test that uses the database and needs no
#      libvirtd (`--db-only`, tests/conftest.py), since PostgreSQL enforces
#      what SQLite lets pass (column lengths, types, locking). Tests without a
#      database would only run a second time, so they are deselected there,
#      and so are the `sqlite_pass` ones (schemathesis; the authorization
#      matrices, whose 653 cells test roles, not the database, and took a
#      third of this pass).
# A pass that collects no test fails too (pytest exit 5), so CI cannot go
# green on an empty suite. With extra arguments (a subset run) an empty part
# is allowed as long as another one ran tests.
# With CI set (.ci/run), a skipped libvirt or browser test is a failure
# (tests/conftest.py), and this script checks the junit files for one as well.
#
# The last lines: the distinct test count (a test run in both passes counts
# once), then "total: N passed, N failed, N skipped" over both passes (CI
# reads that line; it stays last).
#
# VAPOR_TEST_DATABASE_URL overrides the PostgreSQL URL of pass 2;
# VAPOR_TEST_REDIS_URL the Redis the scale-out test uses (default
# redis://127.0.0.1:6379/15), and then no local Redis is looked for.
set -euo pipefail

# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$VAPOR_ROOT"

STARTED_POSTGRES=""
lane_pid="" # the background lane (see below), stopped if this script is interrupted
STARTED_REDIS="" # the pid file of a redis-server this script started

# shellcheck disable=SC2317  # called from the trap below
finish() {
    if [[ -n "$lane_pid" ]]; then
        kill -TERM "$lane_pid" 2>/dev/null || true
        lane_pid=""
    fi
    # The multi-host tests' hosts (tests/multihost) stop with their session; this
    # catches an interrupted one. Only this checkout's hosts are touched.
    bash "${VAPOR_ROOT}/scripts/hosts.sh" stop 2>/dev/null || true
    if ((VAPOR_STARTED_LIBVIRTD)); then
        bash "${VAPOR_ROOT}/scripts/libvirtd.sh" stop || true
    fi
    if [[ -n "$STARTED_POSTGRES" ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$STARTED_POSTGRES" main stop || true
    fi
    if [[ -n "$STARTED_REDIS" ]]; then
        local pid
        pid="$(cat "$STARTED_REDIS" 2>/dev/null || true)"
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
        STARTED_REDIS=""
    fi
}
trap finish EXIT

ensure_postgres() {
    vapor_ensure_packages postgresql
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        local version i
        version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
        [[ -n "$version" ]] || vapor_die "no PostgreSQL cluster under /etc/postgresql"
        vapor_say "starting PostgreSQL ${version}"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        STARTED_POSTGRES="$version"
        for ((i = 0; i < 60; i++)); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 0.5
        done
        pg_isready -q -h 127.0.0.1 -p 5432 || vapor_die "PostgreSQL does not answer on 127.0.0.1:5432"
    fi
}

redis_answers() {
    [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == PONG ]]
}

# A Redis for the scale-out test: the one answering on 127.0.0.1:6379, else one
# started here as a plain daemon (no systemd; loopback only, nothing saved to
# disk) and stopped when the script ends.
ensure_redis() {
    [[ -z "${VAPOR_TEST_REDIS_URL:-}" ]] || return 0
    vapor_ensure_packages redis-server
    redis_answers && return 0
    local dir="${VAPOR_ROOT}/var/redis" i
    mkdir -p "$dir" "${VAPOR_ROOT}/var/log"
    vapor_say "starting redis-server on 127.0.0.1:6379"
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --pidfile "${dir}/redis.pid" \
        --logfile "${VAPOR_ROOT}/var/log/redis.log" --dir "$dir" --save "" --appendonly no
    STARTED_REDIS="${dir}/redis.pid"
    for ((i = 0; i < 60; i++)); do
        redis_answers && return 0
        sleep 0.5
    done
    vapor_die "Redis does not answer on 127.0.0.1:6379 (var/log/redis.log)"
}

# Prints the URL pass 2 uses. The machines this project runs on trust local
# TCP connections for `postgres`; a stock Debian install asks for a password
# instead, so there a `vapor` role (CREATEDB, for the test database) is made
# through the postgres account's peer login.
postgres_url() {
    if [[ -n "${VAPOR_TEST_DATABASE_URL:-}" ]]; then
        printf '%s\n' "$VAPOR_TEST_DATABASE_URL"
        return
    fi
    local url=postgres://postgres@127.0.0.1:5432/vapor
    if ! PGCONNECT_TIMEOUT=5 psql "${url%/vapor}/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
        vapor_say "postgres@127.0.0.1 needs a password here; using a 'vapor' role instead"
        runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vapor') THEN
    CREATE ROLE vapor LOGIN CREATEDB PASSWORD 'vapor';
  END IF;
END $$;
SQL
        url=postgres://vapor:vapor@127.0.0.1:5432/vapor
    fi
    # Django connects to the configured database before creating test_vapor.
    if [[ -z "$(psql "${url%/vapor}/postgres" -Atqc "select 1 from pg_database where datname = 'vapor'")" ]]; then
        psql "${url%/vapor}/postgres" -qc 'create database vapor' >/dev/null
    fi
    printf '%s\n' "$url"
}

vapor_setup
ensure_postgres
ensure_redis
PG_URL="$(postgres_url)"

export VAPOR_Q_SYNC=1 VAPOR_DOWNLOAD_ALLOW_PRIVATE=1
RESULTS="${VAPOR_ROOT}/var/test-results"
mkdir -p "$RESULTS"
rm -f "${RESULTS}"/*.xml "${RESULTS}"/*.rc "${RESULTS}"/db-lane.log

# The SQLite pass in two parts, run at the same time as two lanes:
#   lane 1: the real-libvirtd, multi-host and browser tiers (`libvirt or browser`), which
#           mostly wait on guests and browsers (about half a CPU), one test at a time;
#   lane 2: the tests that need neither (the SQLite part), then the PostgreSQL pass:
#           CPU-bound, so they use the other core meanwhile.
# Their junit files are sqlite-real.xml, sqlite-db.xml and postgres.xml. Lane 2's output
# is printed after lane 1's. VAPOR_TEST_LANES=0 runs the three one after another instead.
LANE_LOG="${RESULTS}/db-lane.log"
real_rc=0 sqlite_rc=0 postgres_rc=0

run_real_lane() {
    vapor_say "pass 1 (lane 1): pytest -m 'not postgres and (libvirt or browser)' on SQLite"
    env -u DATABASE_URL "$VAPOR_PY" -m pytest -m "not postgres and (libvirt or browser)" --junitxml="${RESULTS}/sqlite-real.xml" "$@"
}

run_db_lane() {
    local rc=0
    vapor_say "pass 1 (lane 2): pytest -m 'not postgres and not (libvirt or browser)' on SQLite"
    env -u DATABASE_URL "$VAPOR_PY" -m pytest -m "not postgres and not (libvirt or browser)" --junitxml="${RESULTS}/sqlite-db.xml" "$@" || rc=$?
    echo "$rc" >"${RESULTS}/sqlite-db.rc"
    rc=0
    vapor_say "pass 2 (lane 2): pytest -m 'postgres or not (libvirt or sqlite_pass)' --db-only on PostgreSQL"
    DATABASE_URL="$PG_URL" "$VAPOR_PY" -m pytest -m "postgres or not (libvirt or sqlite_pass)" --db-only --junitxml="${RESULTS}/postgres.xml" "$@" || rc=$?
    echo "$rc" >"${RESULTS}/postgres.rc"
}

if [[ "${VAPOR_TEST_LANES:-1}" == 0 ]]; then
    run_real_lane "$@" || real_rc=$?
    run_db_lane "$@"
else
    run_db_lane "$@" >"$LANE_LOG" 2>&1 &
    lane_pid=$!
    run_real_lane "$@" || real_rc=$?
    vapor_say "lane 1 done; waiting for lane 2 (the SQLite part without libvirtd, then PostgreSQL)"
    wait "$lane_pid" || true
    lane_pid=""
    cat "$LANE_LOG"
fi
sqlite_rc="$(cat "${RESULTS}/sqlite-db.rc" 2>/dev/null || echo 1)"
postgres_rc="$(cat "${RESULTS}/postgres.rc" 2>/dev/null || echo 1)"

status_of() {
    # 0 = passed. 5 = collected nothing: a failure, unless this is a subset run
    # ($2 = 1) and another pass ran tests ($3 = 1).
    local rc="$1" subset="$2" others_ran="$3"
    if ((rc == 5 && subset && others_ran)); then
        echo 0
    else
        echo "$rc"
    fi
}
# Stop what this script started before the summary, so the summary is the
# last thing printed.
finish
trap - EXIT

subset=$(($# > 0 ? 1 : 0))
ran=$(((real_rc == 0) + (sqlite_rc == 0) + (postgres_rc == 0)))
real_status="$(status_of "$real_rc" "$subset" $((ran > 0)))"
sqlite_status="$(status_of "$sqlite_rc" "$subset" $((ran > 0)))"
postgres_status="$(status_of "$postgres_rc" "$subset" $((ran > 0)))"
echo "test.sh: SQLite pass exit ${real_rc} (libvirt and browser tiers) and ${sqlite_rc} (the rest), PostgreSQL pass exit ${postgres_rc}"
# The distinct count, a CI check on skipped tiers, then one closing line for
# both passes together, in the plain form CI reads.
summary_rc=0
"$VAPOR_PY" - "${RESULTS}/sqlite-real.xml" "${RESULTS}/sqlite-db.xml" "${RESULTS}/postgres.xml" <<'PY' || summary_rc=$?
import os
import sys
import xml.etree.ElementTree as ET

TIERS = ("tests.integration.", "tests.multihost.", "tests.browser.")  # the libvirt and browser tiers, by module
in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
ids: dict[str, set[str]] = {}
tier_skips: list[str] = []
for path in filter(os.path.exists, sys.argv[1:]):
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    cases = ids.setdefault(os.path.basename(path).removesuffix(".xml").split("-")[0], set())  # sqlite-real + sqlite-db: sqlite
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.add(test_id)
        if case.find("skipped") is not None and test_id.startswith(TIERS):
            tier_skips.append(test_id)
passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
per_pass = ", ".join(f"{name} {len(cases)}" for name, cases in ids.items())
print(f"distinct tests: {len(set().union(*ids.values()))} ({per_pass}; a test run in both passes counts once)")
if in_ci and tier_skips:
    print(f"test.sh: {len(tier_skips)} libvirt/browser tests skipped under CI, which must run every tier:")
    for test_id in tier_skips:
        print(f"  {test_id}")
print(f"total: {passed} passed, {totals['failures'] + totals['errors']} failed, {totals['skipped']} skipped")
sys.exit(3 if in_ci and tier_skips else 0)
PY

if ((real_status != 0 || sqlite_status != 0 || postgres_status != 0 || summary_rc != 0)); then
    exit 1
fi
exit 0
