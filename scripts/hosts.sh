#!/usr/bin/env bash
# Several libvirt "hosts" on this one machine, for the multi-host tests (issue 15).
#
#   bash scripts/hosts.sh start N      start vh1..vhN (idempotent; running ones are kept)
#   bash scripts/hosts.sh stop         everything gone: guests, daemons, namespaces, veths, mounts, data
#   bash scripts/hosts.sh status       one line per host; exit 1 when one does not answer
#   bash scripts/hosts.sh kill NAME    SIGKILL that host's libvirtd only (a crashed daemon; guests keep running)
#   bash scripts/hosts.sh restart NAME start that host's libvirtd again (after `kill`)
#   bash scripts/hosts.sh uri NAME     print qemu+tcp://ADDR/system
#   bash scripts/hosts.sh uri NAME --tls   print qemu+tls://ADDR/system?pkipath=... (the test CA's client certificate)
#
# Host vhK is a libvirtd + virtlogd with
#   - its own network namespace `vapor-vhK`, joined to the root namespace by a
#     veth pair vvhKr (root side, 10.99.K.1/30) <-> vvhKh (host side, 10.99.K.2/30).
#     Each host routes 10.99.0.0/16 through the root side; forwarding is turned on
#     for our root-side veths only (net.ipv4.conf.vvhKr.forwarding), never for the
#     machine's own interfaces, so host-to-host traffic (peer-to-peer migration)
#     passes through the root namespace and nothing leaves the namespaces made here;
#   - its own mount namespace, in which var/hosts/vhK/{run,lib,cache,log,etc} are
#     bind-mounted over /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
#     /var/log/libvirt and /etc/libvirt, so its pools, domain definitions and
#     sockets are its own, at the same paths as on every other host (what a
#     copy-storage migration needs), and its network namespace's sysfs over
#     /sys/class/net (so the bridges libvirt finds there are its own); and its own UTS namespace (hostname vhK) and
#     host_uuid, so libvirt does not take two hosts for the same one;
#   - TCP without authentication on its own address only (test only), and TLS
#     beside it, with certificates from a test CA made here (var/hosts/pki; the
#     server certificate names the host's IP address), and a `default` dir pool at
#     /var/lib/libvirt/images (inside its mount namespace: var/hosts/vhK/lib/images).
#     No libvirt network is defined (the guests of the tests need none), and the
#     daemons hold no client certificate: peer-to-peer migration between hosts
#     goes over qemu+tcp.
# The namespaces are kept in files under /run/vapor-hosts, so `restart` enters
# the same ones. The single daemon of scripts/libvirtd.sh (namespace `vapor`,
# qemu:///system) is not touched. Processes are found by pid file or by
# network namespace (`ip netns pids`), never by name.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${ROOT}/var/hosts"
STATE=/run/vapor-hosts
LIBVIRTD=/usr/sbin/libvirtd
VIRTLOGD=/usr/sbin/virtlogd
START_TIMEOUT="${VAPOR_HOSTS_START_TIMEOUT:-30}"
MAX_HOSTS=50

say() { printf 'hosts.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

# --- names -------------------------------------------------------------------

index_of() {
    # vhK -> K, or die.
    local name="$1"
    [[ "$name" =~ ^vh([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= MAX_HOSTS)) ||
        die "no such host name: ${name} (vh1..vh${MAX_HOSTS})"
    echo "${BASH_REMATCH[1]}"
}
netns_of() { echo "vapor-vh$1"; }
addr_of() { echo "10.99.$1.2"; }
gateway_of() { echo "10.99.$1.1"; }
uri_of() { echo "qemu+tcp://$(addr_of "$1")/system"; }
tls_uri_of() { echo "qemu+tls://$(addr_of "$1")/system?pkipath=${DATA}/pki/client"; }
dir_of() { echo "${DATA}/vh$1"; }

known_hosts() {
    # The hosts with any trace left: a namespace, a namespace file or a data directory.
    {
        ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^vapor-vh\([0-9]\+\)$/\1/p'
        find "$STATE" -maxdepth 1 -name 'vh*.mnt' -printf '%f\n' 2>/dev/null | sed -n 's/^vh\([0-9]\+\)\.mnt$/\1/p'
        find "$DATA" -maxdepth 1 -name 'vh*' -printf '%f\n' 2>/dev/null | sed -n 's/^vh\([0-9]\+\)$/\1/p'
    } | sort -nu
}

# --- ownership ---------------------------------------------------------------
# The namespaces' names are machine-wide, but several checkouts of Vapor may
# run this script (each with its own var/hosts). A host belongs to the
# checkout that started it (${STATE}/vhK.owner); the others neither reuse,
# kill nor stop it.

owner_of() {
    local k="$1"
    if [[ -s "${STATE}/vh${k}.owner" ]]; then
        cat "${STATE}/vh${k}.owner"
    elif [[ -d "$(dir_of "$k")" ]]; then
        echo "$ROOT"
    elif [[ -e "/run/netns/$(netns_of "$k")" || -e "${STATE}/vh${k}.mnt" ]]; then
        echo "another checkout (no owner recorded)"
    fi
}

mine_or_free() {
    local owner
    owner="$(owner_of "$1")"
    [[ -z "$owner" || "$owner" == "$ROOT" ]]
}

claim() {
    local k="$1"
    mine_or_free "$k" || die "vh${k} belongs to $(owner_of "$k"); stop it there first (scripts/hosts.sh stop)"
    printf '%s\n' "$ROOT" >"${STATE}/vh${k}.owner"
}

# --- processes ---------------------------------------------------------------

running() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/${pid}/status" 2>/dev/null
}

pid_alive() {
    # Prints the pid when the pid file names a running process of `program`.
    local pidfile="$1" program="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" && [[ "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == "$program"* ]] || return 1
    echo "$pid"
}

answers() {
    timeout 5 virsh -c "$(uri_of "$1")" list >/dev/null 2>&1
}

in_host() {
    # Run a command inside host K's namespaces with no descriptor but stdio
    # (a daemon must not keep the caller's lock file or pipe open).
    local k="$1"
    shift
    (
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if ((fd > 2)); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
        done
        exec nsenter --net="/run/netns/$(netns_of "$k")" --mount="${STATE}/vh${k}.mnt" --uts="${STATE}/vh${k}.uts" "$@"
    )
}

# --- set-up --------------------------------------------------------------------

ensure_state_dir() {
    # The namespace files need a mount point that does not propagate.
    mkdir -p "$STATE"
    if ! mountpoint -q "$STATE"; then
        mount --bind "$STATE" "$STATE"
    fi
    mount --make-private "$STATE"
}

make_network() {
    local k="$1" ns root_if host_if
    ns="$(netns_of "$k")" root_if="vvh${k}r" host_if="vvh${k}h"
    [[ -e "/run/netns/${ns}" ]] || ip netns add "$ns"
    ip -n "$ns" link set lo up
    if ! ip link show "$root_if" >/dev/null 2>&1; then
        ip link add "$root_if" type veth peer name "$host_if" netns "$ns"
    fi
    ip addr replace "$(gateway_of "$k")/30" dev "$root_if"
    ip link set "$root_if" up
    sysctl -qw "net.ipv4.conf.${root_if}.forwarding=1"
    ip -n "$ns" addr replace "$(addr_of "$k")/30" dev "$host_if"
    ip -n "$ns" link set "$host_if" up
    ip -n "$ns" route replace 10.99.0.0/16 via "$(gateway_of "$k")"
}

write_config() {
    # A copy of /etc/libvirt without the definitions of the first daemon's
    # pools, networks, domains and secrets (they would autostart here too).
    local k="$1" dir etc
    dir="$(dir_of "$k")" etc="$(dir_of "$k")/etc"
    [[ -s "${dir}/uuid" ]] || cat /proc/sys/kernel/random/uuid >"${dir}/uuid"
    if [[ ! -f "${etc}/libvirtd.conf.orig" ]]; then
        rm -rf "$etc"
        cp -a /etc/libvirt "$etc"
        rm -rf "${etc}/storage" "${etc}/secrets" "${etc}/qemu/networks" "${etc}/qemu/autostart"
        find "${etc}/qemu" -maxdepth 1 -name '*.xml' -delete
        mkdir -p "${etc}/storage" "${etc}/secrets" "${etc}/qemu/networks/autostart"
        cp "${etc}/libvirtd.conf" "${etc}/libvirtd.conf.orig"
    fi
    {
        cat "${etc}/libvirtd.conf.orig"
        cat <<CONF
# Written by scripts/hosts.sh for the test host vh${k}: TCP without authentication
# and TLS (certificates from the test CA of var/hosts/pki), on this host's own
# address in its own network namespace. Test only.
listen_tls = 1
listen_tcp = 1
listen_addr = "$(addr_of "$k")"
auth_tcp = "none"
auth_tls = "none"
key_file = "/etc/libvirt/pki/serverkey.pem"
cert_file = "/etc/libvirt/pki/servercert.pem"
ca_file = "/etc/libvirt/pki/cacert.pem"
host_uuid = "$(<"${dir}/uuid")"
CONF
    } >"${etc}/libvirtd.conf"
}

seed_dirs() {
    local from="$1" to="$2" rel
    chown --reference="$from" "$to"
    chmod --reference="$from" "$to"
    while read -r rel; do
        [[ -d "${to}/${rel}" ]] && continue
        mkdir -p "${to}/${rel}"
        chown --reference="${from}/${rel}" "${to}/${rel}"
        chmod --reference="${from}/${rel}" "${to}/${rel}"
    done < <(cd "$from" && find . -mindepth 1 -maxdepth 2 -type d ! -name 'domain-*' -printf '%P\n')
}

# A certificate signed by the test CA: sign_cert DIR NAME SUBJECT EXTENSIONS -> DIR/NAMEkey.pem, DIR/NAMEcert.pem.
sign_cert() {
    local dir="$1" name="$2" subject="$3" extensions="$4"
    openssl req -new -newkey rsa:2048 -nodes -keyout "${dir}/${name}key.pem" -out "${dir}/${name}.csr" -subj "$subject" 2>/dev/null
    openssl x509 -req -in "${dir}/${name}.csr" -CA "${DATA}/pki/cacert.pem" -CAkey "${DATA}/pki/ca/cakey.pem" -CAcreateserial \
        -CAserial "${DATA}/pki/ca/serial" -out "${dir}/${name}cert.pem" -days 30 -extfile <(printf '%s\n' "$extensions") 2>/dev/null
    rm -f "${dir}/${name}.csr"
    chmod 0600 "${dir}/${name}key.pem"
}

make_pki() {
    # The test CA (var/hosts/pki: cacert.pem, ca/cakey.pem), a client certificate for whoever connects
    # with qemu+tls (pki/client, the layout libvirt's `pkipath` URI parameter reads), and host K's
    # server certificate for its address (in its /etc/libvirt/pki).
    local k="$1" pki="${DATA}/pki" server
    server="$(dir_of "$k")/etc/pki"
    if [[ ! -s "${pki}/cacert.pem" ]]; then
        mkdir -p "${pki}/ca" "${pki}/client"
        chmod 0700 "${pki}/ca"
        openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "${pki}/ca/cakey.pem" -out "${pki}/cacert.pem" -days 30 \
            -subj "/CN=Vapor test CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        cp "${pki}/cacert.pem" "${pki}/client/cacert.pem"
        sign_cert "${pki}/client" client "/CN=vapor-test-client" \
            $'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
    fi
    if [[ ! -s "${server}/servercert.pem" ]]; then
        mkdir -p "$server"
        cp "${pki}/cacert.pem" "${server}/cacert.pem"
        sign_cert "$server" server "/CN=$(addr_of "$k")" \
            "$(printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s' "$(addr_of "$k")")"
    fi
}

make_mounts() {
    local k="$1" dir mnt uts
    dir="$(dir_of "$k")" mnt="${STATE}/vh${k}.mnt" uts="${STATE}/vh${k}.uts"
    mkdir -p "${dir}/run" "${dir}/lib" "${dir}/cache" "${dir}/log"
    chmod 0755 "$dir"
    # The packaged directory skeleton (images, qemu/nvram, /var/log/libvirt/qemu ...)
    # with its owners and modes: libvirtd expects it and does not make all of it.
    seed_dirs /var/lib/libvirt "${dir}/lib"
    seed_dirs /var/cache/libvirt "${dir}/cache"
    seed_dirs /var/log/libvirt "${dir}/log"
    mkdir -p "${dir}/lib/images"
    write_config "$k"
    make_pki "$k"
    # A namespace file is a bind mount of /proc/PID/ns/...: present and mounted = the namespace exists.
    if mountpoint -q "$mnt" 2>/dev/null && mountpoint -q "$uts" 2>/dev/null; then
        return 0
    fi
    umount "$mnt" 2>/dev/null || true
    umount "$uts" 2>/dev/null || true
    touch "$mnt" "$uts"
    # Made from inside the host's network namespace, so the sysfs mounted here shows that namespace's
    # interfaces: libvirtd's interface driver (the bridges a host offers) reads /sys/class/net. Only the
    # network parts are bound over /sys: the rest (cgroups above all) stays the machine's.
    nsenter --net="/run/netns/$(netns_of "$k")" unshare --mount="$mnt" --uts="$uts" --propagation private sh -euc '
        hostname "$1"
        mkdir -p "$2/sys"
        mount -t sysfs sysfs "$2/sys"
        mount --bind "$2/sys/class/net" /sys/class/net
        mount --bind "$2/sys/devices/virtual/net" /sys/devices/virtual/net
        mount --bind "$2/run" /run/libvirt
        mount --bind "$2/lib" /var/lib/libvirt
        mount --bind "$2/cache" /var/cache/libvirt
        mount --bind "$2/log" /var/log/libvirt
        mount --bind "$2/etc" /etc/libvirt
    ' sh "vh${k}" "$dir"
}

start_daemons() {
    local k="$1" dir
    dir="$(dir_of "$k")"
    if ! pid_alive "${dir}/run/virtlogd.pid" "$VIRTLOGD" >/dev/null; then
        LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/virtlogd.log" in_host "$k" "$VIRTLOGD" --daemon --pid-file /run/libvirt/virtlogd.pid
    fi
    if ! pid_alive "${dir}/run/libvirtd.pid" "$LIBVIRTD" >/dev/null; then
        LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/libvirtd.log" in_host "$k" "$LIBVIRTD" --daemon --listen --pid-file /run/libvirt/libvirtd.pid
    fi
    local waited=0
    until answers "$k"; do
        if ((waited >= START_TIMEOUT * 5)); then
            say "vh${k}: libvirtd did not answer on $(uri_of "$k") within ${START_TIMEOUT}s; its log ends with:"
            tail -n 30 "${dir}/log/libvirtd.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
}

ensure_pool() {
    local uri
    uri="$(uri_of "$1")"
    if ! virsh -c "$uri" pool-info default >/dev/null 2>&1; then
        virsh -c "$uri" pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
    fi
    local info
    info="$(virsh -c "$uri" pool-info default)"
    [[ "$info" =~ State:[[:space:]]*running ]] || virsh -c "$uri" pool-start default >/dev/null
    virsh -c "$uri" pool-autostart default >/dev/null
}

start_host() {
    local k="$1"
    claim "$k"
    mkdir -p "$(dir_of "$k")"
    make_network "$k"
    make_mounts "$k"
    start_daemons "$k"
    ensure_pool "$k"
    say "vh${k} answers on $(uri_of "$k") (libvirtd pid $(<"$(dir_of "$k")/run/libvirtd.pid"), namespace $(netns_of "$k"))"
}

# --- tear-down ---------------------------------------------------------------

stop_host() {
    local k="$1" ns dir uri pid i
    ns="$(netns_of "$k")" dir="$(dir_of "$k")" uri="$(uri_of "$k")"
    if answers "$k"; then
        # Guests first, through libvirt, so it records them as stopped.
        while read -r dom; do
            [[ -n "$dom" ]] && timeout 20 virsh -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
        done < <(timeout 10 virsh -c "$uri" list --name 2>/dev/null)
    fi
    for pidfile in "${dir}/run/libvirtd.pid" "${dir}/run/virtlogd.pid"; do
        pid="$(pid_alive "$pidfile" "$LIBVIRTD" || pid_alive "$pidfile" "$VIRTLOGD" || true)"
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
    done
    # Whatever still runs in the namespace (QEMU of a host whose daemon was
    # killed, a daemon that ignored TERM) is killed: it belongs to no one else.
    if [[ -e "/run/netns/${ns}" ]]; then
        for ((i = 0; i < 50; i++)); do
            [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && break
            sleep 0.1
        done
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        for ((i = 0; i < 50; i++)); do
            [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && break
            sleep 0.1
        done
        [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] || say "vh${k}: processes left in ${ns}: $(ip netns pids "$ns" | tr '\n' ' ')"
    fi
    umount "${STATE}/vh${k}.mnt" 2>/dev/null || true
    umount "${STATE}/vh${k}.uts" 2>/dev/null || true
    rm -f "${STATE}/vh${k}.mnt" "${STATE}/vh${k}.uts" "${STATE}/vh${k}.owner"
    [[ -e "/run/netns/${ns}" ]] && ip netns delete "$ns"
    ip link del "vvh${k}r" 2>/dev/null || true # gone with the namespace's end of the pair, normally
    rm -rf "$dir"
    say "vh${k} stopped and removed"
}

stop_all() {
    local k
    for k in $(known_hosts); do
        if mine_or_free "$k"; then
            stop_host "$k"
        else
            say "vh${k} belongs to $(owner_of "$k"); left running"
        fi
    done
    rm -rf "${DATA}/pki"
    if [[ -z "$(known_hosts)" ]] && mountpoint -q "$STATE" 2>/dev/null; then
        umount "$STATE" || true
        rmdir "$STATE" 2>/dev/null || true
    fi
    rmdir "$DATA" 2>/dev/null || true
}

status() {
    local rc=0 k dir pid
    for k in $(known_hosts); do
        dir="$(dir_of "$k")"
        pid="$(pid_alive "${dir}/run/libvirtd.pid" "$LIBVIRTD" || echo -)"
        if answers "$k"; then
            echo "vh${k} $(uri_of "$k") answering owner=$(owner_of "$k") libvirtd=${pid} processes=$(ip netns pids "$(netns_of "$k")" 2>/dev/null | wc -l) netns=$(netns_of "$k")"
        else
            echo "vh${k} $(uri_of "$k") not-answering libvirtd=${pid}"
            rc=1
        fi
    done
    return "$rc"
}

case "${1:-}" in
    start)
        n="${2:-}"
        [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_HOSTS)) || die "usage: $0 start N (1..${MAX_HOSTS})"
        [[ -x "$LIBVIRTD" && -x "$VIRTLOGD" ]] || die "libvirtd/virtlogd missing (scripts/setup.sh installs them)"
        ensure_state_dir
        mkdir -p "$DATA"
        for ((k = 1; k <= n; k++)); do
            start_host "$k"
        done
        ;;
    stop) stop_all ;;
    status) status ;;
    kill)
        k="$(index_of "${2:-}")"
        mine_or_free "$k" || die "vh${k} belongs to $(owner_of "$k")"
        pid="$(pid_alive "$(dir_of "$k")/run/libvirtd.pid" "$LIBVIRTD")" || die "vh${k}: no libvirtd of ours runs"
        kill -KILL "$pid"
        say "vh${k}: libvirtd (pid ${pid}) killed; its guests keep running"
        ;;
    restart)
        k="$(index_of "${2:-}")"
        [[ -e "${STATE}/vh${k}.mnt" ]] || die "vh${k} was never started (use: $0 start N)"
        ensure_state_dir
        start_host "$k"
        ;;
    uri)
        k="$(index_of "${2:-}")"
        if [[ "${3:-}" == "--tls" ]]; then tls_uri_of "$k"; else uri_of "$k"; fi
        ;;
    *)
        echo "usage: $0 start N | stop | status | kill NAME | restart NAME | uri NAME [--tls]" >&2
        exit 2
        ;;
esac
