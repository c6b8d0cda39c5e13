# shellcheck shell=bash
# The unprivileged user the web server and the worker run as (sourced by
# run.sh after the set-up, which alone needs root).
#
# As root, run.sh:
#   1. creates the system user VAPOR_USER (default `vapor`) if it is missing;
#   2. gives it the data directory (VAPOR_DATA_DIR, default var/: SQLite, the
#      kept keys; mode 0700) except var/log (libvirtd's logs), and the ISO download
#      directory (VAPOR_ISO_DOWNLOAD_DIR), which the worker writes;
#   3. lets it reach the code, the interpreter and those directories: a
#      directory it cannot search (a checkout under /root, which is 0700) gets
#      an ACL entry for search only (`setfacl -m u:vapor:x`), as virt-install
#      does for QEMU, and run.sh says so;
#   4. reaches libvirt: the libvirtd scripts/libvirtd.sh starts gives its
#      read-write socket to the group libvirt (0770, no polkit), and the user
#      is put in that group, so it connects directly. A libvirtd started
#      otherwise (polkit without D-Bus lets only root in) is bridged: a socat
#      run by root forwards a socket only VAPOR_USER may open (0660 in a 0750
#      directory of its group, under /run) to /run/libvirt/libvirt-sock, and
#      the web server and the worker connect there
#      (VAPOR_LIBVIRT_URI=qemu+unix:///system?socket=...). Only for the
#      default URI: any other VAPOR_LIBVIRT_URI is used as given.
#
# Not root: nothing changes hands, the processes run as whoever runs run.sh.
#
# After these, `"${VAPOR_AS_USER[@]}" COMMAND` runs COMMAND as the user by
# exec (setpriv), so `COMMAND &` leaves the command's own pid in $!.

VAPOR_USER="${VAPOR_USER:-vapor}"
VAPOR_USER_HOME=/var/lib/vapor
VAPOR_AS_USER=()
VAPOR_BRIDGE_DIR=""
VAPOR_BRIDGE_PID=""
VAPOR_LIBVIRT_SOCKET=/run/libvirt/libvirt-sock

vapor_ensure_user() {
    ((EUID == 0)) || return 0
    if ! getent passwd "$VAPOR_USER" >/dev/null; then
        useradd --system --user-group --home-dir "$VAPOR_USER_HOME" --no-create-home \
            --shell /usr/sbin/nologin "$VAPOR_USER"
        vapor_say "created the system user ${VAPOR_USER}"
    fi
    [[ "$(id -u "$VAPOR_USER")" != 0 ]] || vapor_die "VAPOR_USER=${VAPOR_USER} is root; name an unprivileged user"
    # The group of libvirtd's read-write socket when scripts/libvirtd.sh started the daemon.
    if getent group libvirt >/dev/null && ! id -nG "$VAPOR_USER" | tr ' ' '\n' | grep -qx libvirt; then
        usermod -a -G libvirt "$VAPOR_USER"
        vapor_say "added ${VAPOR_USER} to the group libvirt (libvirtd's socket)"
    fi
    # No capability survives the switch, and nothing the user runs may gain one (setuid programs).
    VAPOR_AS_USER=(
        setpriv --reuid="$VAPOR_USER" --regid="$VAPOR_USER" --init-groups --inh-caps=-all --no-new-privs
        env HOME="$VAPOR_USER_HOME" USER="$VAPOR_USER" LOGNAME="$VAPOR_USER"
    )
}

# Grant VAPOR_USER search (x, never read) on every directory above $1 that it cannot search.
vapor_user_search() {
    local path="$1" dir=""
    local -a parts
    IFS=/ read -r -a parts <<<"${path#/}"
    for part in "${parts[@]}"; do
        dir="${dir}/${part}"
        [[ -d "$dir" ]] || break
        "${VAPOR_AS_USER[@]}" test -x "$dir" && continue
        command -v setfacl >/dev/null || vapor_die "${VAPOR_USER} cannot search ${dir} and setfacl is missing (apt-get install acl)"
        setfacl -m "u:${VAPOR_USER}:x" "$dir"
        vapor_say "gave ${VAPOR_USER} search (x) on ${dir} by an ACL, to reach ${path}"
    done
}

vapor_give_files() {
    ((EUID == 0)) || return 0
    local data="${VAPOR_DATA_DIR:-${VAPOR_ROOT}/var}" download="${VAPOR_ISO_DOWNLOAD_DIR:-/var/lib/vapor/iso}" entry
    chown "${VAPOR_USER}:" "$data"
    chmod 0700 "$data" # the database and the keys are nobody else's
    for entry in "$data"/* "$data"/.[!.]*; do
        [[ -e "$entry" && "$entry" != "${data%/}/log" ]] || continue
        chown -R "${VAPOR_USER}:" "$entry"
    done
    mkdir -p "$download"
    chown -R "${VAPOR_USER}:" "$download"
    local python
    python="$(readlink -f "$VAPOR_PY")"
    for entry in "${VAPOR_ROOT}/manage.py" "$python" "$data" "$download"; do
        vapor_user_search "$entry"
    done
    "${VAPOR_AS_USER[@]}" test -r "${VAPOR_ROOT}/manage.py" -a -x "$python" -a -w "$data" -a -w "$download" ||
        vapor_die "${VAPOR_USER} still cannot read ${VAPOR_ROOT}, run ${python} or write ${data} and ${download}"
}

vapor_bridge_libvirt() {
    ((EUID == 0)) || return 0
    [[ "${VAPOR_LIBVIRT_URI:-qemu:///system}" == "qemu:///system" ]] || return 0
    # A libvirtd that scripts/libvirtd.sh started lets the group libvirt in: no bridge, no root process.
    if timeout 10 "${VAPOR_AS_USER[@]}" virsh -q -c qemu:///system version >/dev/null 2>&1; then
        vapor_say "${VAPOR_USER} reaches libvirtd's socket directly (group libvirt)"
        return 0
    fi
    vapor_say "libvirtd (not started by this set-up) refuses ${VAPOR_USER}; bridging its socket with socat, run by root"
    [[ -S "$VAPOR_LIBVIRT_SOCKET" ]] || vapor_die "no libvirt socket at ${VAPOR_LIBVIRT_SOCKET}"
    command -v socat >/dev/null || vapor_die "socat is missing (apt-get install socat)"
    VAPOR_BRIDGE_DIR="$(mktemp -d /run/vapor-libvirt.XXXXXX)"
    chgrp "$VAPOR_USER" "$VAPOR_BRIDGE_DIR"
    chmod 0750 "$VAPOR_BRIDGE_DIR"
    local socket="${VAPOR_BRIDGE_DIR}/libvirt-sock" i
    socat "UNIX-LISTEN:${socket},fork,mode=0660,group=${VAPOR_USER}" "UNIX-CONNECT:${VAPOR_LIBVIRT_SOCKET}" &
    VAPOR_BRIDGE_PID=$!
    for ((i = 0; i < 100; i++)); do
        [[ -S "$socket" ]] && break
        kill -0 "$VAPOR_BRIDGE_PID" 2>/dev/null || vapor_die "socat (the libvirt bridge) ended at start"
        sleep 0.1
    done
    [[ -S "$socket" ]] || vapor_die "socat did not create ${socket}"
    export VAPOR_LIBVIRT_URI="qemu+unix:///system?socket=${socket}"
}

# After the web server and the worker are gone (their connections closed, so
# socat's per-connection children have ended too).
vapor_unbridge_libvirt() {
    [[ -n "$VAPOR_BRIDGE_PID" ]] && kill -TERM "$VAPOR_BRIDGE_PID" 2>/dev/null
    [[ -n "$VAPOR_BRIDGE_DIR" ]] && rm -rf "$VAPOR_BRIDGE_DIR"
    return 0
}
