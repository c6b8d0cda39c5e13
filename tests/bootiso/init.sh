#!/bin/busybox sh
# PID 1 of the probe guest: prints the block devices and firmware the guest
# kernel sees on the serial console, then powers off; booted with the kernel
# parameter vapor.shell (the shell ISO) it stays up with a shell on the serial
# port instead (see the end of this file). initramfs.py fills in
# the placeholders (a name between two at signs) before packing it. Every wait
# is bounded: a probe that hangs would cost a test its whole timeout instead of
# failing with the serial log in hand.
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Only emergencies from the kernel on the console: a warning printed in the
# middle of a DISK line would make it unreadable.
dmesg -n 1
for m in @MODULES@; do
    modprobe "$m" || echo "PROBE-NOTE modprobe $m failed"
done

# SCSI disks and CD-ROMs (types 0, 5, 7, 14) that have no block device yet.
pending() {
    n=0
    for d in /sys/bus/scsi/devices/*:*:*:*; do
        [ -r "$d/type" ] || continue
        case "$(cat "$d/type")" in
            0|5|7|14) [ -d "$d/block" ] || n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}
snapshot() {
    for b in /sys/block/*; do
        [ -e "$b" ] || continue
        echo "${b##*/}:$(cat "$b/size"):$(cat "$b/ro")"
    done
    echo "pending=$(pending)"
}

# Settled = nothing pending and the same picture three times, 0.25 s apart;
# give up after 20 s and report what is there.
prev=""
stable=0
i=0
while [ "$i" -lt 80 ]; do
    cur="$(snapshot)"
    if [ "$cur" = "$prev" ] && [ "$(pending)" = 0 ]; then
        stable=$((stable + 1))
        [ "$stable" -ge 2 ] && break
    else
        stable=0
    fi
    prev="$cur"
    usleep 250000
    i=$((i + 1))
done

for b in /sys/block/*; do
    name="${b##*/}"
    case "$name" in
        '*'|loop*|ram*|zram*) continue ;;
    esac
    sectors="$(cat "$b/size")"
    echo "DISK name=$name sectors=$sectors bytes=$((sectors * 512)) ro=$(cat "$b/ro") removable=$(cat "$b/removable")"
done

if [ -d /sys/firmware/efi ]; then
    modprobe @EFI_MODULE@ || echo "PROBE-NOTE modprobe @EFI_MODULE@ failed"
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    sb=0
    var=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
    # 4 bytes of attributes, then the value (busybox's od here has no -j/-N).
    if [ -r "$var" ]; then
        # shellcheck disable=SC2046
        set -- $(od -An -tu1 "$var")
        [ "${5:-0}" = 1 ] && sb=1
    fi
    echo "FIRMWARE=efi secureboot=$sb"
else
    echo "FIRMWARE=bios secureboot=0"
fi
echo "@MARKER@"
sync
case " $(cat /proc/cmdline) " in
    *" vapor.shell "*) ;;
    *)
        poweroff -f
        exit 1
        ;;
esac

# --- The shell variant: a shell on the serial port and one on the screen. ---
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root PS1='vapor-shell# '
mkdir -p /root /etc/acpi/PWRF /var/log /var/run
hostname vapor-shell
# cloud-init NoCloud reader: the CD labelled cidata (the ISO's volume id, at byte 32808), its hostname and each key's SHA256 fingerprint.
modprobe isofs || echo "PROBE-NOTE modprobe isofs failed"
for dev in /dev/sr*; do
    [ -b "$dev" ] || continue
    [ "$(dd if="$dev" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' ')" = cidata ] || continue
    mkdir -p /cidata && mount -t iso9660 -o ro "$dev" /cidata || continue
    echo "CLOUD-INIT hostname=$(sed -n 's/^local-hostname: *//p' /cidata/meta-data)"
    awk '/^public-keys:/ {k = 1; next} k && /^- / {print substr($0, 3); next} {k = 0}' /cidata/meta-data | while read -r _type data _rest; do
        hex="$(echo "$data" | base64 -d | sha256sum | cut -d' ' -f1)"
        # shellcheck disable=SC2059
        echo "CLOUD-INIT key=SHA256:$(printf "$(echo "$hex" | sed 's/../\\x&/g')" | base64 | tr -d '=\n')"
    done
    umount /cidata
done
# ACPI power button (libvirt's graceful shutdown): power off, as an OS would.
modprobe button || echo "PROBE-NOTE modprobe button failed"
modprobe evdev || echo "PROBE-NOTE modprobe evdev failed"
modprobe virtio_balloon || echo "PROBE-NOTE modprobe virtio_balloon failed"
modprobe virtio_net || echo "PROBE-NOTE modprobe virtio_net failed"
printf '#!/bin/sh\nsync\npoweroff -f\n' >/etc/acpi/PWRF/00000080
chmod 755 /etc/acpi/PWRF/00000080
i=0
while [ ! -e /dev/input/event0 ] && [ "$i" -lt 20 ]; do
    usleep 100000
    i=$((i + 1))
done
acpid -c /etc/acpi || echo "PROBE-NOTE acpid failed"
# Guest addresses (issue 14): a virtio NIC, and udhcpc's script that puts the leased address on it.
modprobe virtio_net || echo "PROBE-NOTE modprobe virtio_net failed"
mkdir -p /usr/share/udhcpc
printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr flush dev "$interface"\nip addr add "$ip/$mask" dev "$interface"\n' >/usr/share/udhcpc/default.script
chmod 755 /usr/share/udhcpc/default.script
# The screen (tty1): a banner, then a shell, restarted when it exits.
(
    while :; do
        printf '\n  Vapor shell probe (%s): @SHELL_READY@\n\n' "$(uname -r)"
        TERM=linux setsid -c sh
        sleep 1
    done
) </dev/tty1 >/dev/tty1 2>&1 &
# The serial port: the ready line, then a shell with job control (setsid -c
# makes ttyS0 its controlling terminal), restarted when it exits.
while :; do
    echo "@SHELL_READY@"
    TERM=vt102 setsid -c sh </dev/ttyS0 >/dev/ttyS0 2>&1
    sleep 1
done
