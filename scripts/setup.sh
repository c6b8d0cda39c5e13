#!/usr/bin/env bash
# Idempotent set-up shared by the run and test commands.
#
#   bash scripts/setup.sh          everything below
#   bash scripts/setup.sh --venv   only system packages + virtualenv (for `make lint`)
#   source scripts/setup.sh        define the functions; run.sh/test.sh call vapor_setup
#
# 1. Debian packages, installed only when dpkg says one is missing (apt-get
#    update only then too), so a warm machine pays nothing.
# 2. .venv from requirements-dev.txt; pip runs again only when a requirements
#    file or the interpreter changed (a hash stamp inside .venv).
# 3. frontend/node_modules from frontend/package-lock.json (noVNC, xterm.js: the
#    console pages serve them as static files, nothing comes from a CDN);
#    `npm ci` runs again only when the lock changed (a hash stamp, as for .venv).
#    Debian's nodejs and npm are installed when no npm is on PATH.
# 4. var/ (SQLite, logs), the ISO directories, `manage.py migrate`, and
#    `manage.py collectstatic` (VAPOR_DATA_DIR/static, which `manage.py serve`
#    serves).
# 5. libvirtd (scripts/libvirtd.sh) if none answers, then `vapor_bootstrap`
#    for the `default` storage pool and NAT network.
#
# After vapor_setup, VAPOR_STARTED_LIBVIRTD=1 tells the caller it started the
# daemon (and so should stop it when it is done).

VAPOR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAPOR_VENV="${VAPOR_ROOT}/.venv"
VAPOR_PY="${VAPOR_VENV}/bin/python"
# shellcheck disable=SC2034  # read by run.sh and test.sh, which source this file
VAPOR_STARTED_LIBVIRTD=0

VAPOR_PACKAGES=(
    libvirt-daemon-system libvirt-clients libvirt-dev pkg-config gcc python3-dev python3-venv
    qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools osinfo-db xorriso dnsmasq-base
    iptables iproute2 mtools ca-certificates procps make
    acl socat # run.sh: search ACLs for the unprivileged user, the libvirt socket bridge (scripts/user.sh)
    curl # the download benchmark's baseline (bench/isos_download.py)
    chromium fonts-dejavu-core # the browser tests (tests/browser): Playwright drives this Chromium
    openssh-client # the cloud-init tests compare key fingerprints with ssh-keygen
    nginx openssl # TLS in front of `manage.py serve` (docs/nginx.md) and its test; never started as a daemon here
)

vapor_say() { printf '==> %s\n' "$*" >&2; }
vapor_die() {
    printf 'setup: %s\n' "$*" >&2
    exit 1
}

# Install the given Debian packages that are not installed yet.
vapor_ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "ii " ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || vapor_die "missing packages (${missing[*]}); run as root to install them"
    vapor_say "installing ${missing[*]}"
    # Keep package scripts from starting daemons (libvirtd, postgresql) on their
    # own: without systemd they would start outside our control, and libvirtd
    # in the host's network namespace. Only if no policy is in place already.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        own_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    } || rc=$?
    ((own_policy)) && rm -f "$policy"
    ((rc == 0)) || vapor_die "apt-get failed (exit ${rc})"
}

vapor_python() {
    # Debian 12's /usr/bin/python3 is 3.11.2; a pyenv python3 first on PATH
    # works as well. Django 5.2 and the pinned wheels need >= 3.11.
    local python="${VAPOR_PYTHON:-python3}"
    command -v "$python" >/dev/null || vapor_die "${python} not found"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        vapor_die "$("$python" -V 2>&1) is too old: Vapor needs Python 3.11 or newer (set VAPOR_PYTHON)"
    printf '%s\n' "$python"
}

vapor_ensure_venv() {
    if [[ -x "$VAPOR_PY" ]] && ! "$VAPOR_PY" -c 'import sys' 2>/dev/null; then
        vapor_say "the virtualenv's interpreter is gone; rebuilding .venv"
        rm -rf "$VAPOR_VENV"
    fi
    if [[ ! -x "$VAPOR_PY" ]]; then
        local python
        python="$(vapor_python)"
        vapor_say "creating .venv with $("$python" -V 2>&1)"
        "$python" -m venv "$VAPOR_VENV"
    fi
    local stamp="${VAPOR_VENV}/.vapor-requirements.sha256" want
    want="$(cat "${VAPOR_ROOT}/requirements.txt" "${VAPOR_ROOT}/requirements-dev.txt" <("$VAPOR_PY" -VV) | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        vapor_say "installing Python requirements (libvirt-python builds from source)"
        "$VAPOR_PY" -m pip install --disable-pip-version-check --no-input --progress-bar off -q -r "${VAPOR_ROOT}/requirements-dev.txt"
        printf '%s\n' "$want" >"$stamp"
    fi
}

vapor_ensure_frontend() {
    local dir="${VAPOR_ROOT}/frontend"
    local stamp="${dir}/node_modules/.vapor-lock.sha256" want
    want="$(sha256sum "${dir}/package-lock.json" | cut -d' ' -f1)"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
    command -v npm >/dev/null || vapor_ensure_packages nodejs npm
    vapor_say "installing the console pages' browser libraries (npm ci)"
    # --ignore-scripts: the packages are plain files for the browser; nothing of theirs runs here.
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || vapor_die "npm ci failed"
    printf '%s\n' "$want" >"$stamp"
}

vapor_manage() {
    (cd "$VAPOR_ROOT" && "$VAPOR_PY" manage.py "$@")
}

vapor_ensure_dirs() {
    mkdir -p "${VAPOR_DATA_DIR:-${VAPOR_ROOT}/var}" "${VAPOR_ROOT}/var/log"
    # The default of VAPOR_ISO_DOWNLOAD_DIR (vaporsite/env.py) and the first
    # ISO search directory, where libvirt's own tools put ISOs.
    local dir
    for dir in "${VAPOR_ISO_DOWNLOAD_DIR:-/var/lib/vapor/iso}" /var/lib/libvirt/images/iso; do
        mkdir -p "$dir" 2>/dev/null || printf 'setup: cannot create %s (not root?); ISO downloads there will fail\n' "$dir" >&2
    done
}

vapor_ensure_libvirtd() {
    if bash "${VAPOR_ROOT}/scripts/libvirtd.sh" status >/dev/null 2>&1; then
        return 0
    fi
    [[ $EUID -eq 0 ]] || vapor_die "no libvirtd answers on qemu:///system; run as root to start one"
    vapor_say "starting libvirtd"
    bash "${VAPOR_ROOT}/scripts/libvirtd.sh" start
    # shellcheck disable=SC2034  # read by the caller
    VAPOR_STARTED_LIBVIRTD=1
}

vapor_setup() {
    local mode="${1:-all}"
    vapor_ensure_packages "${VAPOR_PACKAGES[@]}"
    vapor_ensure_venv
    [[ "$mode" == "--venv" ]] && return 0
    vapor_ensure_frontend
    vapor_ensure_dirs
    vapor_say "migrating the database"
    vapor_manage migrate --noinput
    vapor_say "collecting static files"
    vapor_manage collectstatic --noinput -v 0
    vapor_ensure_libvirtd
    vapor_say "making sure the default storage pool and network exist"
    vapor_manage vapor_bootstrap
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    vapor_setup "$@"
fi
