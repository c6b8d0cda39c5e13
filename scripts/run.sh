#!/usr/bin/env bash
# The run command: set up what is missing, then serve Vapor on 127.0.0.1:8000
# (`manage.py serve`: uvicorn, HTTP, websockets and the static files the
# set-up collected) with two django-q2 clusters beside it: the main one (provisioning, hashing,
# schedules) and one for ISO downloads alone (Q_CLUSTER_NAME=vapor-downloads,
# settings.DOWNLOAD_QUEUE), so a slow download never holds a worker the rest
# waits for. Ctrl-C stops the server, the workers, and libvirtd if this script
# started it.
#
#   bash scripts/run.sh            (or: make run)
#
# VAPOR_ADMIN_PASSWORD sets the password of the admin user created on the
# first run; without it a random one is printed once. VAPOR_LISTEN sets the
# address (default 127.0.0.1:8000), VAPOR_WEB_WORKERS the server's processes;
# behind nginx with TLS see docs/nginx.md.
#
# Run as root, only the set-up keeps root: the server and the worker run as
# the unprivileged user VAPOR_USER (default `vapor`, created if missing;
# scripts/user.sh).
set -euo pipefail

# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# shellcheck source=scripts/user.sh
source "$(dirname "${BASH_SOURCE[0]}")/user.sh"
cd "$VAPOR_ROOT"

ADDRESS="${VAPOR_LISTEN:-127.0.0.1:8000}"
WEB_PID=""
WORKER_PID=""
DOWNLOADER_PID=""

# shellcheck disable=SC2317  # called from the traps below
stop_all() {
    trap - INT TERM EXIT
    local pid i
    for pid in $WEB_PID $WORKER_PID $DOWNLOADER_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # django-q2 finishes its current task on TERM; give it a moment, no more.
    for ((i = 0; i < 150; i++)); do
        local running=0
        for pid in $WEB_PID $WORKER_PID $DOWNLOADER_PID; do
            kill -0 "$pid" 2>/dev/null && running=1
        done
        ((running)) || break
        sleep 0.1
    done
    for pid in $WEB_PID $WORKER_PID $DOWNLOADER_PID; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    vapor_unbridge_libvirt
    if ((VAPOR_STARTED_LIBVIRTD)); then
        bash "${VAPOR_ROOT}/scripts/libvirtd.sh" stop
    fi
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

vapor_setup
vapor_ensure_user
vapor_give_files
vapor_bridge_libvirt

# Creates the superuser `admin` unless one exists. The password comes from the
# environment, never the command line (which `ps` shows to everyone).
ADMIN_STATUS="$(
    "${VAPOR_AS_USER[@]}" "$VAPOR_PY" manage.py shell -v 0 -c '
import os, secrets
from django.contrib.auth import get_user_model
User = get_user_model()
names = list(User.objects.filter(is_superuser=True).values_list("username", flat=True))
if names:
    print("exists " + ",".join(names))
elif User.objects.filter(username="admin").exists():
    print("blocked")
else:
    given = os.environ.get("VAPOR_ADMIN_PASSWORD", "")
    password = given or secrets.token_urlsafe(12)
    User.objects.create_superuser("admin", "", password)
    print("created " + ("(the value of VAPOR_ADMIN_PASSWORD)" if given else password))
'
)"

case "$ADMIN_STATUS" in
    created*) LOGIN="user admin, password ${ADMIN_STATUS#created } (shown only this once)" ;;
    exists*) LOGIN="superuser ${ADMIN_STATUS#exists } (password unchanged; reset: .venv/bin/python manage.py changepassword NAME)" ;;
    *) LOGIN="a user 'admin' exists but is no superuser: .venv/bin/python manage.py createsuperuser" ;;
esac

cat <<EOF

  Vapor on http://${ADDRESS}/
    Admin:      http://${ADDRESS}/admin/   (${LOGIN})
    API docs:   http://${ADDRESS}/api/docs/
    API token:  .venv/bin/python manage.py drf_create_token admin
                curl -H "Authorization: Token KEY" http://${ADDRESS}/api/v1/virtualmachines/isos
    Logs:       var/log/ (libvirtd, virtlogd)
    Runs as:    $( ((EUID == 0)) && printf 'user %s (only the set-up keeps root)' "$VAPOR_USER" || id -un)
  Ctrl-C stops the server and the workers$( ((VAPOR_STARTED_LIBVIRTD)) && printf ' and libvirtd')

EOF

# As VAPOR_USER (empty prefix when not root).
"${VAPOR_AS_USER[@]}" "$VAPOR_PY" manage.py qcluster &
WORKER_PID=$!
# The downloads' cluster: its own queue, so provisioning and hashing never wait behind a slow download.
Q_CLUSTER_NAME=vapor-downloads "${VAPOR_AS_USER[@]}" "$VAPOR_PY" manage.py qcluster &
DOWNLOADER_PID=$!
"${VAPOR_AS_USER[@]}" "$VAPOR_PY" manage.py serve --bind "$ADDRESS" &
WEB_PID=$!

# Any one ending on its own (port taken, crash) ends the run: a server
# without its workers would accept work that never starts.
rc=0
wait -n "$WEB_PID" "$WORKER_PID" "$DOWNLOADER_PID" || rc=$?
echo "run.sh: a process ended (exit ${rc}); stopping the rest" >&2
exit "$rc"
