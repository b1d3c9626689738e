#!/bin/bash
# Builds the Hangar integration-test guest image (see guest/README.md).
#
#   guest/build.sh [OUTDIR]
#
# OUTDIR defaults to ${HANGAR_GUEST_DIR:-/var/cache/hangar/guest}. Produces
# OUTDIR/hangar-guest.qcow2 plus the kernel and initramfs it boots
# (OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/cmdline). The result is cached:
# when OUTDIR/stamp records the same inputs (this script's sha256, kernel and
# busybox package versions) the script exits at once. The qcow2 path is always
# the last line on stdout; everything else goes to stderr.
#
# Needs root (loop mount for extlinux) and these Debian packages:
#   linux-image-cloud-amd64 busybox-static extlinux syslinux-common
#   qemu-utils fdisk e2fsprogs cpio
# Everything the guest runs is embedded below, so the script hash covers it.
set -euo pipefail
umask 022
export LC_ALL=C
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

die() { echo "guest/build.sh: error: $*" >&2; exit 1; }
log() { echo "guest/build.sh: $*" >&2; }

OUTDIR="${1:-${HANGAR_GUEST_DIR:-/var/cache/hangar/guest}}"
[ -n "$OUTDIR" ] || die "empty OUTDIR"
IMAGE_NAME=hangar-guest.qcow2
DISK_MIB=128          # virtual disk size
PART_START=2048       # first partition starts at sector 2048 (1 MiB)
FS_LABEL=hangar-root
CMDLINE="console=ttyS0,115200 root=/dev/vda1 rw quiet mitigations=off no_timer_check"
# insmod order; each module's dependencies must come before it (checked below).
# Note: virtio.ko depends on virtio_ring.ko, so virtio_ring goes first.
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net button evdev virtio_balloon"

# ---------------------------------------------------------------- tools
need_cmd() { # need_cmd CMD PACKAGE
	command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install the Debian package '$2' (apt-get install $2)"
}
need_cmd dpkg-query dpkg
need_cmd sha256sum coreutils
need_cmd sfdisk fdisk
need_cmd mkfs.ext4 e2fsprogs
need_cmd qemu-img qemu-utils
need_cmd extlinux extlinux
need_cmd cpio cpio
need_cmd gzip gzip
need_cmd modinfo kmod
need_cmd losetup mount
need_cmd mount mount
need_cmd umount mount
need_cmd flock util-linux
need_cmd mountpoint util-linux

MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
[ -r "$MBR_BIN" ] || die "$MBR_BIN not found; install the Debian package 'syslinux-common'"

pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }
pkg_installed busybox-static ||
	die "busybox-static is not installed (apt-get install busybox-static); a static busybox is required"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing; reinstall the Debian package 'busybox-static'"
BB_VERSION=$(dpkg-query -W -f='${Version}' busybox-static)
BB_APPLETS=" $("$BUSYBOX" --list | tr '\n' ' ') "
for applet in sh init httpd udhcpc acpid switch_root insmod setsid cttyhack poweroff findfs; do
	case "$BB_APPLETS" in *" $applet "*) ;; *) die "busybox-static lacks the '$applet' applet" ;; esac
done

# Kernel: the one linux-image-cloud-amd64 currently depends on.
pkg_installed linux-image-cloud-amd64 ||
	die "linux-image-cloud-amd64 is not installed (apt-get install linux-image-cloud-amd64)"
KVER=$(dpkg-query -W -f='${Depends}' linux-image-cloud-amd64 | tr ', ' '\n\n' | sed -n 's/^linux-image-\(.*-cloud-amd64\)$/\1/p' | tail -n1)
[ -n "$KVER" ] || KVER=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n1 || true)
[ -n "$KVER" ] || die "cannot determine the cloud kernel version (is linux-image-cloud-amd64 installed?)"
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -r "$KERNEL" ] || die "$KERNEL not found; install the Debian package 'linux-image-$KVER'"
[ -d "$MODDIR" ] || die "$MODDIR not found; install the Debian package 'linux-image-$KVER'"
KPKG_VERSION=$(dpkg-query -W -f='${Version}' "linux-image-$KVER" 2>/dev/null || echo unknown)

SELF="${BASH_SOURCE[0]}"
SCRIPT_SHA=$(sha256sum "$SELF" | cut -d' ' -f1)
STAMP_CONTENT="script_sha256=$SCRIPT_SHA
kernel=$KVER $KPKG_VERSION
busybox=$BB_VERSION"

IMAGE="$OUTDIR/$IMAGE_NAME"
STAMP="$OUTDIR/stamp"
cache_hit() {
	[ -f "$IMAGE" ] && [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initrd.img" ] &&
		[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ]
}
if cache_hit; then
	log "cached image is up to date"
	echo "$IMAGE"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (needs a loop mount to install extlinux)"

mkdir -p "$OUTDIR"
exec 9>"$OUTDIR/.build.lock"
flock 9 # serialize concurrent builds; the winner's result is a cache hit for the others
if cache_hit; then
	log "cached image is up to date (built concurrently)"
	echo "$IMAGE"
	exit 0
fi

# ---------------------------------------------------------------- workspace
WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
MNT="$WORK/mnt"
LOOP=""
cleanup() {
	local rc=$?
	set +e
	if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || umount -l "$MNT"; fi
	if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi
	rm -rf "$WORK"
	[ "$rc" = 0 ] || echo "guest/build.sh: build FAILED (exit $rc)" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

log "building guest image: kernel $KVER ($KPKG_VERSION), busybox $BB_VERSION -> $IMAGE"

ROOT="$WORK/root"   # ext4 root filesystem tree
INITRD="$WORK/initrd"
mkdir -p "$ROOT" "$INITRD" "$MNT"

install_busybox() { # install_busybox DIR: busybox + a symlink per applet
	local dir=$1 p
	mkdir -p "$dir/bin" "$dir/sbin" "$dir/usr/bin" "$dir/usr/sbin"
	cp "$BUSYBOX" "$dir/bin/busybox"
	"$BUSYBOX" --list-full | while read -r p; do
		[ "$p" = bin/busybox ] && continue
		[ -e "$dir/$p" ] || ln -s /bin/busybox "$dir/$p"
	done
}

# ---------------------------------------------------------------- kernel modules
mkdir -p "$INITRD/lib/modules"
loaded=" "
for m in $MODULES; do
	f=$(find "$MODDIR/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) -print -quit)
	[ -n "$f" ] || die "module $m not found under $MODDIR (linux-image-$KVER)"
	for d in $(modinfo -F depends "$f" | tr ',' ' '); do
		case "$loaded" in *" $d "*) ;; *) die "module $m depends on $d, which is not loaded before it";; esac
	done
	dst="$INITRD/lib/modules/$m.ko"
	case "$f" in
	*.ko) cp "$f" "$dst" ;;
	*.ko.xz) need_cmd xz xz-utils; xz -dc "$f" >"$dst" ;;
	*.ko.zst) need_cmd zstd zstd; zstd -qdc "$f" >"$dst" ;;
	*.ko.gz) gzip -dc "$f" >"$dst" ;;
	esac
	loaded="$loaded$m "
done
echo "$MODULES" >"$INITRD/lib/modules/order"

# ---------------------------------------------------------------- initramfs
install_busybox "$INITRD"
mkdir -p "$INITRD"/{dev,proc,sys,newroot,run,tmp}
mknod -m 600 "$INITRD/dev/console" c 5 1
cat >"$INITRD/init" <<'EOF'
#!/bin/sh
# Hangar guest initramfs: load virtio modules, mount the ext4 root, switch_root.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
rescue() {
	echo "hangar-initramfs: $*; starting a rescue shell" >/dev/console
	exec setsid cttyhack sh
}
for m in $(cat /lib/modules/order); do
	insmod "/lib/modules/$m.ko" || echo "hangar-initramfs: insmod $m failed" >/dev/console
done
root=/dev/vda1
for arg in $(cat /proc/cmdline); do
	case "$arg" in root=*) root=${arg#root=} ;; esac
done
i=0
while :; do
	case "$root" in
	LABEL=*|UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
	*) dev=$root ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	i=$((i + 1))
	[ $i -lt 200 ] || rescue "root device $root not found"
	sleep 0.05
done
mount -t ext4 -o rw "$dev" /newroot || rescue "cannot mount $dev"
[ -x /newroot/sbin/init ] || rescue "no /sbin/init on $dev"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
EOF
chmod 755 "$INITRD/init"
(cd "$INITRD" && find . | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$WORK/initrd.img"

# ---------------------------------------------------------------- root filesystem
install_busybox "$ROOT"
mkdir -p "$ROOT"/{boot/extlinux,data,dev,etc/init.d,etc/acpi/PWRF,mnt,proc,root,run,sys,tmp,var/log,usr/share/udhcpc,www/cgi-bin}
chmod 1777 "$ROOT/tmp"
chmod 700 "$ROOT/root"
ln -s /run "$ROOT/var/run"
cp "$KERNEL" "$ROOT/boot/vmlinuz"
cp "$WORK/initrd.img" "$ROOT/boot/initrd.img"
echo 0 >"$ROOT/data/counter"

cat >"$ROOT/boot/extlinux/extlinux.conf" <<EOF
SERIAL 0 115200
DEFAULT hangar
PROMPT 0
TIMEOUT 0
LABEL hangar
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND $CMDLINE
EOF

cat >"$ROOT/etc/passwd" <<'EOF'
root::0:0:root:/root:/bin/sh
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
EOF
echo "hangar-guest" >"$ROOT/etc/hostname"
ln -s /run/resolv.conf "$ROOT/etc/resolv.conf"
cat >"$ROOT/etc/profile" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root USER=root LOGNAME=root
PS1='root@\h:\w# ' # static glibc busybox cannot resolve uids, so no \u
EOF

cat >"$ROOT/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot -f
::shutdown:/sbin/hangar-stop
EOF

cat >"$ROOT/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# Hangar guest services. Prints the HANGAR-GUEST-READY line when httpd is up.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755,size=16m tmpfs /run
mount -t tmpfs -o mode=1777,size=16m tmpfs /tmp
mkdir -p /run/hangar

# Hostname from SMBIOS type 1 serial (QEMU -smbios type=1,serial=NAME).
hn=
[ -r /sys/class/dmi/id/product_serial ] && hn=$(cat /sys/class/dmi/id/product_serial 2>/dev/null)
hn=$(echo $hn)
[ -n "$hn" ] || hn=hangar-guest
hostname "$hn" || hostname hangar-guest
hn=$(hostname)

# ACPI power button -> /etc/acpi/PWRF/00000080 (button.ko + evdev.ko loaded by the initramfs).
acpid -c /etc/acpi -l /run/hangar/acpid.log -p /run/hangar/acpid.pid

# In-memory counter, +1 every 100 ms (tmpfs).
(
	n=0
	while :; do
		n=$((n + 1))
		echo $n >/run/hangar/counter
		sleep 0.1
	done
) </dev/null >/dev/null 2>&1 &
echo $! >/run/hangar/counter.pid

# Disk counter on the root fs, +1 every second, synced, survives reboots/clones.
(
	while :; do
		n=
		read -r n </data/counter
		case "$n" in '' | *[!0-9]*) n=0 ;; esac
		echo $((n + 1)) >/data/counter.new && mv -f /data/counter.new /data/counter && sync
		sleep 1
	done
) </dev/null >/dev/null 2>&1 &
echo $! >/run/hangar/disk_counter.pid

# Network: lo + eth0 with DHCP. udhcpc -b returns after a lease or after 2
# unanswered discovers (~2 s, then keeps trying in the background).
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	udhcpc -i eth0 -s /usr/share/udhcpc/default.script -b -t 2 -T 1 -A 5 \
		-p /run/hangar/udhcpc.pid -x "hostname:$hn" </dev/null >/run/hangar/udhcpc.log 2>&1
fi

# HTTP server.
httpd -p 80 -h /www
i=0
while [ $i -lt 50 ]; do
	grep -qE '^ *[0-9]+: [0-9A-F]+:0050 [0-9A-F]+:[0-9A-F]+ 0A ' /proc/net/tcp /proc/net/tcp6 2>/dev/null && break
	i=$((i + 1))
	sleep 0.1
done

read -r bid </proc/sys/kernel/random/boot_id
echo "HANGAR-GUEST-READY boot_id=$bid hostname=$hn" >/run/hangar/ready
echo "HANGAR-GUEST-READY boot_id=$bid hostname=$hn" >/dev/ttyS0
EOF
chmod 755 "$ROOT/etc/init.d/rcS"

cat >"$ROOT/sbin/hangar-stop" <<'EOF'
#!/bin/sh
# Stop the writers and flush the root fs (used before power-off).
for p in /run/hangar/counter.pid /run/hangar/disk_counter.pid; do
	[ -r "$p" ] && kill "$(cat "$p")" 2>/dev/null
done
sync
mount -o remount,ro / 2>/dev/null
sync
EOF
chmod 755 "$ROOT/sbin/hangar-stop"

cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# ACPI power button (QMP system_powerdown): clean, immediate power-off.
echo "hangar-guest: power button pressed, powering off" >/dev/ttyS0
/sbin/hangar-stop
poweroff -f
EOF
chmod 755 "$ROOT/etc/acpi/PWRF/00000080"

cat >"$ROOT/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# udhcpc event script: apply the lease.
[ -n "$1" ] || exit 1
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	ifconfig "$interface" "$ip" ${subnet:+netmask $subnet} ${broadcast:+broadcast $broadcast}
	if [ -n "$router" ]; then
		while route del default gw 0.0.0.0 dev "$interface" 2>/dev/null; do :; done
		for r in $router; do
			route add default gw "$r" dev "$interface"
			break
		done
	fi
	{
		[ -n "$domain" ] && echo "search $domain"
		for d in $dns; do echo "nameserver $d"; done
	} >/run/resolv.conf
	echo "$ip" >/run/hangar/ip
	;;
esac
exit 0
EOF
chmod 755 "$ROOT/usr/share/udhcpc/default.script"

cat >"$ROOT/www/index.html" <<'EOF'
<html><body><pre>
Hangar test guest.
GET /cgi-bin/status      hostname=, boot_id=, counter=, disk_counter=, marker= lines
GET /cgi-bin/mark?VALUE  stores VALUE in /data/marker (synced), answers "ok"
</pre></body></html>
EOF

cat >"$ROOT/www/cgi-bin/status" <<'EOF'
#!/bin/sh
rd() { # rd VAR FILE: first line of FILE (retry: the writer may be mid-write)
	_v=
	for _i in 1 2 3 4 5; do
		if [ "$2" = /run/hangar/counter ]; then
			# Rewritten in place ten times a second: one read(2) of the
			# whole file, never the shell's read, which takes a byte at a
			# time — between two bytes the writer can truncate and rewrite
			# it, and 43 reads as 4 (or 38 as 30: the 3 of "38", the 0 of
			# "40"). The other files are static or replaced by rename.
			_v=$(cat "$2" 2>/dev/null)
		else
			read -r _v <"$2" 2>/dev/null
		fi
		[ -n "$_v" ] && break
		[ -e "$2" ] || break
	done
	eval "$1=\$_v"
}
rd hn /proc/sys/kernel/hostname
rd bid /proc/sys/kernel/random/boot_id
rd c /run/hangar/counter
rd dc /data/counter
marker=
[ -e /data/marker ] && rd marker /data/marker
printf 'Content-Type: text/plain\r\n\r\n'
printf 'hostname=%s\nboot_id=%s\ncounter=%s\ndisk_counter=%s\nmarker=%s\n' "$hn" "$bid" "${c:-0}" "${dc:-0}" "$marker"
EOF

cat >"$ROOT/www/cgi-bin/mark" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
v=$(httpd -d "$QUERY_STRING")
printf 'Content-Type: text/plain\r\n\r\n'
if printf '%s\n' "$v" >/data/marker.$$ && mv -f /data/marker.$$ /data/marker && sync; then
	echo ok
else
	rm -f /data/marker.$$
	echo error
fi
EOF
chmod 755 "$ROOT/www/cgi-bin/status" "$ROOT/www/cgi-bin/mark"

# ---------------------------------------------------------------- disk image
RAW="$WORK/disk.raw"
truncate -s "${DISK_MIB}M" "$RAW"
printf 'label: dos\nunit: sectors\n\nstart=%d, type=83, bootable\n' "$PART_START" |
	sfdisk --quiet --no-reread --no-tell-kernel "$RAW" >&2
OFFSET=$((PART_START * 512))
FS_BYTES=$((DISK_MIB * 1024 * 1024 - OFFSET))
# 64bit off for syslinux's ext4 reader; tree copied in with -d (no mount needed).
mkfs.ext4 -q -F -L "$FS_LABEL" -b 4096 -N 4096 -O ^64bit -E "offset=$OFFSET,nodiscard" \
	-d "$ROOT" "$RAW" "$((FS_BYTES / 4096))" >&2
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none

# extlinux installs its boot sector + ldlinux.sys through the mounted fs.
LOOP=$(losetup --find --show --offset "$OFFSET" --sizelimit "$FS_BYTES" "$RAW")
mount -t ext4 "$LOOP" "$MNT"
extlinux --install "$MNT/boot/extlinux" >&2
umount "$MNT"
losetup -d "$LOOP"
LOOP=""

qemu-img convert -q -f raw -O qcow2 "$RAW" "$WORK/$IMAGE_NAME"
cp "$KERNEL" "$WORK/vmlinuz"
echo "$CMDLINE" >"$WORK/cmdline"
printf '%s\n' "$STAMP_CONTENT" >"$WORK/stamp"

# ---------------------------------------------------------------- publish
rm -f "$STAMP"
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initrd.img" "$OUTDIR/initrd.img"
mv -f "$WORK/cmdline" "$OUTDIR/cmdline"
mv -f "$WORK/$IMAGE_NAME" "$IMAGE"
mv -f "$WORK/stamp" "$STAMP"
log "built $IMAGE ($(du -h "$IMAGE" | cut -f1) on disk)"
echo "$IMAGE"
