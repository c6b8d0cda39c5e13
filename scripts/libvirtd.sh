#!/usr/bin/env bash
# Start, stop or report a local libvirtd + virtlogd for Vapor on a machine
# without systemd (containers, CI runners).
#
#   bash scripts/libvirtd.sh start|stop|status|stop-daemon|restart-daemon
#
# The daemons run inside a private network namespace (VAPOR_LIBVIRTD_NETNS,
# default "vapor"; set it to "" to use the host's namespace) so the NAT
# networks, bridges, iptables rules and guest traffic libvirt creates never
# touch the host's network. The UNIX socket under /run/libvirt is still
# reachable from the host, so qemu:///system works as usual.
#
# Both directions are idempotent: `start` does nothing when a daemon already
# answers, `stop` does nothing when no daemon of ours runs. Daemons are found
# by their pid files only, never by process name, so a daemon someone else
# started is never killed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="${ROOT}/var/log"
STATE_DIR=/run/vapor
LIBVIRTD=/usr/sbin/libvirtd
VIRTLOGD=/usr/sbin/virtlogd
LIBVIRTD_PID="${STATE_DIR}/libvirtd.pid"
VIRTLOGD_PID="${STATE_DIR}/virtlogd.pid"
NETNS_FILE="${STATE_DIR}/libvirtd.netns"
CONFIG="${STATE_DIR}/libvirtd.conf"
URI=qemu:///system
NETNS="${VAPOR_LIBVIRTD_NETNS-vapor}"
START_TIMEOUT="${VAPOR_LIBVIRTD_START_TIMEOUT:-60}"

say() { printf 'libvirtd.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

answers() {
    # `timeout` because a daemon that is half up can accept the connection
    # and then never reply; that must count as "not answering".
    timeout 10 virsh -c "$URI" list >/dev/null 2>&1
}

running() {
    # A zombie still answers kill -0 until its parent (here PID 1, which may be
    # slow to reap) collects it, but it is gone for our purposes.
    local pid="$1"
    kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/${pid}/status" 2>/dev/null
}

alive() {
    # True when the pid file names a running process of the expected program
    # (a stale pid file must not make us signal an unrelated process).
    local pidfile="$1" program="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" && [[ "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == "$program"* ]]
}

in_netns() {
    # The daemons outlive this script: they must not inherit any descriptor
    # but stdio. An inherited lock file (`flock FILE bash libvirtd.sh start`)
    # would stay locked for the daemon's whole life, and an inherited pipe
    # would keep the caller's reader waiting for an end of file.
    (
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if ((fd > 2)); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
        done
        if [[ -n "$NETNS" ]]; then
            exec ip netns exec "$NETNS" "$@"
        else
            exec "$@"
        fi
    )
}

fix_kvm() {
    # Without udev /dev/kvm stays root-only 0600. QEMU runs as libvirt-qemu
    # (group kvm), and libvirtd must see the same permissions at start-up or it
    # re-probes QEMU capabilities on every call (seconds per `virsh define`).
    [[ -e /dev/kvm ]] || { say "/dev/kvm missing: guests will use TCG emulation"; return 0; }
    getent group kvm >/dev/null || groupadd --system kvm
    chown root:kvm /dev/kvm
    chmod 0660 /dev/kvm
}

make_netns() {
    [[ -n "$NETNS" ]] || return 0
    if [[ ! -e "/run/netns/${NETNS}" ]]; then
        ip netns add "$NETNS"
        say "created network namespace ${NETNS}"
    fi
    ip netns exec "$NETNS" ip link set lo up
}

show_logs() {
    local f
    for f in "${LOG_DIR}/libvirtd.log" "${LOG_DIR}/virtlogd.log"; do
        [[ -f "$f" ]] || continue
        say "last lines of ${f}:"
        tail -n 30 "$f" >&2
    done
}

# The daemon's own configuration (the packaged libvirtd.conf sets nothing):
# its read-write socket belongs to the group `libvirt`, mode 0770, without
# polkit (which needs D-Bus, absent here). run.sh puts its unprivileged user
# in that group, so the web server and the worker reach libvirt directly and
# nothing but the daemons keeps root. Being in the group is worth root on the
# host, as libvirt documents; nobody else may open the socket.
write_config() {
    getent group libvirt >/dev/null || groupadd --system libvirt
    cat >"$CONFIG" <<'CONF'
# Written by scripts/libvirtd.sh start; see there.
unix_sock_group = "libvirt"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
CONF
}

start() {
    if answers; then
        say "a libvirtd already answers on ${URI}; nothing to do"
        return 0
    fi
    mkdir -p "$LOG_DIR" "$STATE_DIR" /run/libvirt
    write_config
    fix_kvm
    make_netns
    printf '%s\n' "$NETNS" >"$NETNS_FILE"
    # LIBVIRT_LOG_OUTPUTS: the daemons detach from the terminal, so without it
    # their start-up errors would be lost. Level 3 = warnings and errors.
    if ! alive "$VIRTLOGD_PID" "$VIRTLOGD"; then
        LIBVIRT_LOG_OUTPUTS="3:file:${LOG_DIR}/virtlogd.log" in_netns "$VIRTLOGD" --daemon --pid-file "$VIRTLOGD_PID"
    fi
    if ! alive "$LIBVIRTD_PID" "$LIBVIRTD"; then
        LIBVIRT_LOG_OUTPUTS="3:file:${LOG_DIR}/libvirtd.log" in_netns "$LIBVIRTD" --daemon --config "$CONFIG" --pid-file "$LIBVIRTD_PID"
    fi
    local waited=0
    until answers; do
        if ((waited >= START_TIMEOUT * 2)); then
            say "libvirtd did not answer on ${URI} within ${START_TIMEOUT}s"
            show_logs
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    say "libvirtd answers on ${URI} (pid $(<"$LIBVIRTD_PID"), network namespace: ${NETNS:-host})"
}

stop_pid() {
    # TERM, wait up to 15 s, then KILL: a stuck daemon must not block a CI run.
    local program="$1" pidfile="$2" name pid i
    name="$(basename "$program")"
    if alive "$pidfile" "$program"; then
        pid="$(<"$pidfile")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            say "${name} (pid ${pid}) ignored TERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped ${name} (pid ${pid})"
    fi
    rm -f "$pidfile"
}

stop() {
    if [[ -f "$NETNS_FILE" ]]; then
        NETNS="$(<"$NETNS_FILE")"
    fi
    if alive "$LIBVIRTD_PID" "$LIBVIRTD" && answers; then
        # QEMU and dnsmasq are not children that die with libvirtd: they would
        # keep running (and keep the namespace busy) after the daemon is gone.
        local dom net
        while read -r dom; do
            [[ -n "$dom" ]] || continue
            virsh -c "$URI" destroy "$dom" >/dev/null && say "destroyed domain ${dom}"
        done < <(virsh -c "$URI" list --name)
        while read -r net; do
            [[ -n "$net" ]] || continue
            virsh -c "$URI" net-destroy "$net" >/dev/null && say "stopped network ${net}"
        done < <(virsh -c "$URI" net-list --name)
    fi
    stop_pid "$LIBVIRTD" "$LIBVIRTD_PID"
    stop_pid "$VIRTLOGD" "$VIRTLOGD_PID"
    if [[ -n "$NETNS" && -e "/run/netns/${NETNS}" ]]; then
        ip netns delete "$NETNS"
        say "removed network namespace ${NETNS}"
    fi
    rm -f "$NETNS_FILE"
}

status() {
    local rc=0
    if answers; then
        echo "libvirtd: answering on ${URI}"
    else
        echo "libvirtd: not answering on ${URI}"
        rc=1
    fi
    alive "$LIBVIRTD_PID" "$LIBVIRTD" && echo "libvirtd pid: $(<"$LIBVIRTD_PID") (started by this script)"
    alive "$VIRTLOGD_PID" "$VIRTLOGD" && echo "virtlogd pid: $(<"$VIRTLOGD_PID") (started by this script)"
    [[ -f "$NETNS_FILE" ]] && echo "network namespace: $(sed "s/^$/host/" "$NETNS_FILE")"
    return "$rc"
}

# Like `systemctl restart libvirtd`: only the daemon goes away and comes back;
# running guests (QEMU processes) and networks keep running, as they do when a
# host's libvirtd is restarted for an upgrade. For the reliability tests.
restart_daemon() {
    if [[ -f "$NETNS_FILE" ]]; then
        NETNS="$(<"$NETNS_FILE")"
    fi
    alive "$LIBVIRTD_PID" "$LIBVIRTD" || die "no libvirtd started by this script is running (pid file ${LIBVIRTD_PID})"
    stop_pid "$LIBVIRTD" "$LIBVIRTD_PID"
    if [[ -n "${VAPOR_RESTART_PAUSE:-}" ]]; then
        sleep "$VAPOR_RESTART_PAUSE"
    fi
    start
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    stop-daemon)
        # Only libvirtd itself; guests keep running. `start` brings it back.
        alive "$LIBVIRTD_PID" "$LIBVIRTD" || die "no libvirtd started by this script is running (pid file ${LIBVIRTD_PID})"
        stop_pid "$LIBVIRTD" "$LIBVIRTD_PID"
        ;;
    restart-daemon) restart_daemon ;;
    *)
        echo "usage: $0 start|stop|status|stop-daemon|restart-daemon" >&2
        exit 2
        ;;
esac
