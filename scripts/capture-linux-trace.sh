#!/usr/bin/env bash
# Captures register traces of a real, unmodified Linux guest driving QEMU's virtio-mmio
# devices, and writes them as JSON Lines into traces/ (format: traces/README.md).
#
#   sudo scripts/capture-linux-trace.sh [--device entropy|block|all] [--version 1|2|all]
#                                       [--accel tcg|kvm|auto] [--out DIR]
#
# What it does, on a Debian-family machine, as root (for apt):
#   1. Downloads Debian's kernel package (linux-image-cloud-amd64's current dependency, or
#      KERNEL_PACKAGE=...) and busybox-static with `apt-get download`, from whatever archive
#      the machine's apt configuration names, into a cache outside the repository
#      (${XDG_CACHE_HOME:-$HOME/.cache}/virtio-conform/linux-trace). Nothing is rebuilt:
#      vmlinuz and the modules are used as Debian ships them.
#   2. Builds a small initramfs: busybox-static, the virtio modules (virtio_mmio, virtio-rng,
#      virtio_blk and what modules.dep says they need) and an /init that loads them, does
#      some I/O, unloads the device driver and powers off, writing "VCTRACE phase NAME"
#      lines to the kernel log (printed on the serial console) between the steps.
#   3. Boots it under `qemu-system-x86_64 -M microvm` with one virtio-mmio device, once per
#      device and transport version, with QEMU's memory_region_ops_read/write and
#      virtio_mmio_setting_irq trace events on. TCG by default: under nested virtualisation
#      this kernel hung in decompression with KVM. `--accel kvm` forces KVM, `--accel auto`
#      takes it when /dev/kvm is readable and writable.
#   4. Keeps only the accesses to the virtio-mmio transport that holds the device, the level
#      changes of its interrupt and the phase markers (read back from the serial port's
#      register writes, so they sit in order between the register accesses).
#
# Idempotent: downloads and extractions are cached; traces are rewritten on every run.
# Needs: bash, apt-get, dpkg-deb, gzip, awk, timeout, qemu-system-x86_64
# (scripts/install-qemu.sh). VCTRACE_TIMEOUT (seconds per boot, default 180) and
# VCTRACE_KEEP=1 (keep the work directory with QEMU's raw log) help debugging.
set -euo pipefail

die() {
  echo "capture-linux-trace: $*" >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
devices="entropy block"
versions="2 1"
accel=tcg
out="$repo/traces"
while [ $# -gt 0 ]; do
  case "$1" in
  --device) [ $# -ge 2 ] || die "--device needs a value"; devices="$2"; shift 2 ;;
  --version) [ $# -ge 2 ] || die "--version needs a value"; versions="$2"; shift 2 ;;
  --accel) [ $# -ge 2 ] || die "--accel needs a value"; accel="$2"; shift 2 ;;
  --out) [ $# -ge 2 ] || die "--out needs a value"; out="$2"; shift 2 ;;
  -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$devices" = all ] && devices="entropy block"
[ "$versions" = all ] && versions="2 1"
for d in $devices; do
  case "$d" in entropy | block) ;; *) die "unknown device '$d' (entropy, block, all)" ;; esac
done
for v in $versions; do
  case "$v" in 1 | 2) ;; *) die "unknown transport version '$v' (1, 2, all)" ;; esac
done
case "$accel" in auto | tcg | kvm) ;; *) die "unknown --accel '$accel' (auto, tcg, kvm)" ;; esac

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found; run scripts/install-qemu.sh"
command -v apt-get >/dev/null || die "apt-get not found (a Debian-family machine is needed)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/virtio-conform/linux-trace
mkdir -p "$cache/debs" "$out"

# ---- 1. Debian packages ----------------------------------------------------------------------
apt_opts=(-q -o APT::Sandbox::User=root)
kpkg=${KERNEL_PACKAGE:-}
if [ -z "$kpkg" ]; then
  if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "apt lists lack linux-image-cloud-amd64 and updating them needs root"
    apt-get "${apt_opts[@]}" update >&2
  fi
  kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
  [ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 to a versioned kernel package"
fi
kver_pkg=$(apt-cache policy "$kpkg" | awk '$1 == "Candidate:" { print $2 }')
bb_ver=$(apt-cache policy busybox-static | awk '$1 == "Candidate:" { print $2 }')
[ -n "$kver_pkg" ] && [ "$kver_pkg" != "(none)" ] || die "no candidate version of $kpkg"
[ -n "$bb_ver" ] && [ "$bb_ver" != "(none)" ] || die "no candidate version of busybox-static"

fetch_deb() { # package version -> path of the .deb in the cache
  local pkg=$1 ver=$2 f
  f=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_*.deb" | while read -r p; do
    [ "$(dpkg-deb -f "$p" Version)" = "$ver" ] && echo "$p"
  done | head -n 1)
  if [ -z "$f" ]; then
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$pkg=$ver" >&2) ||
      die "apt-get download $pkg=$ver failed"
    f=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_*.deb" | while read -r p; do
      [ "$(dpkg-deb -f "$p" Version)" = "$ver" ] && echo "$p"
    done | head -n 1)
  fi
  [ -n "$f" ] || die "downloaded $pkg=$ver but cannot find its .deb"
  echo "$f"
}
kdeb=$(fetch_deb "$kpkg" "$kver_pkg")
bbdeb=$(fetch_deb busybox-static "$bb_ver")

# Kernel release (the directory under lib/modules) and the extracted pieces we need.
kdir="$cache/$kpkg-$kver_pkg"
if [ ! -f "$kdir/done" ]; then
  rm -rf "$kdir" "$kdir.tmp"
  mkdir -p "$kdir.tmp/x"
  dpkg-deb -x "$kdeb" "$kdir.tmp/x"
  mkdir -p "$kdir.tmp/bb"
  dpkg-deb -x "$bbdeb" "$kdir.tmp/bb"
  krel=$(ls "$kdir.tmp/x/lib/modules")
  [ "$(echo "$krel" | wc -l)" = 1 ] || die "expected one kernel release in $kdeb, found: $krel"
  cfg="$kdir.tmp/x/boot/config-$krel"
  # The modules we need, unless Debian builds them in.
  for sym in VIRTIO_MMIO HW_RANDOM_VIRTIO VIRTIO_BLK; do
    grep -Eq "^CONFIG_$sym=(y|m)$" "$cfg" || die "$kpkg has CONFIG_$sym neither built in nor a module"
  done
  bb="$kdir.tmp/bb/bin/busybox"
  "$bb" depmod -b "$kdir.tmp/x" "$krel"
  mods=""
  for m in virtio_mmio virtio-rng virtio_blk; do
    line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$kdir.tmp/x/lib/modules/$krel/modules.dep" || true)
    if [ -z "$line" ]; then
      grep -Eq "/$m\.ko" "$kdir.tmp/x/lib/modules/$krel/modules.builtin" ||
        die "module $m neither in modules.dep nor built in"
      continue
    fi
    mods="$mods ${line%%:*} ${line#*:}"
  done
  mkdir -p "$kdir.tmp/keep/lib/modules/$krel"
  for f in $(echo "$mods" | tr ' ' '\n' | sort -u); do
    mkdir -p "$kdir.tmp/keep/lib/modules/$krel/$(dirname "$f")"
    cp "$kdir.tmp/x/lib/modules/$krel/$f" "$kdir.tmp/keep/lib/modules/$krel/$f"
  done
  cp "$kdir.tmp/x/lib/modules/$krel/modules.builtin" "$kdir.tmp/x/lib/modules/$krel/modules.order" \
    "$kdir.tmp/keep/lib/modules/$krel/"
  "$bb" depmod -b "$kdir.tmp/keep" "$krel"
  mkdir -p "$kdir.tmp/keep/bin"
  cp "$bb" "$kdir.tmp/keep/bin/busybox"
  cp "$kdir.tmp/x/boot/vmlinuz-$krel" "$kdir.tmp/vmlinuz"
  rm -rf "$kdir.tmp/x" "$kdir.tmp/bb"
  echo "$krel" >"$kdir.tmp/release"
  touch "$kdir.tmp/done"
  mv "$kdir.tmp" "$kdir"
fi
krel=$(cat "$kdir/release")

# ---- 2. initramfs ------------------------------------------------------------------------------
work=$(mktemp -d)
if [ -n "${VCTRACE_KEEP:-}" ]; then
  echo "capture-linux-trace: keeping the work directory $work" >&2
else
  trap 'rm -rf "$work"' EXIT
fi
root="$work/root"
cp -a "$kdir/keep" "$root"
mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
device=$(sed -n 's/.*vctrace.device=\([a-z]*\).*/\1/p' /proc/cmdline)
# Through the kernel log at error level: printk writes the line to the serial console before
# the write returns, so the marker sits exactly between the register accesses around it
# (a plain write to the tty would be sent later, by the UART interrupt).
mark() { echo "<3>VCTRACE phase $1" >/dev/kmsg; }
mark probe
modprobe virtio_mmio
mark driver
case "$device" in
entropy)
  modprobe virtio-rng
  mark io
  cat /sys/class/misc/hw_random/rng_current
  dd if=/dev/hwrng of=/tmp/e bs=16 count=4 2>/dev/null
  echo "entropy: $(wc -c </tmp/e) bytes"
  mark remove
  rmmod virtio_rng
  ;;
block)
  modprobe virtio_blk
  mark io
  dd if=/dev/vda of=/tmp/b bs=512 count=4 2>/dev/null
  echo "block read: $(wc -c </tmp/b) bytes"
  dd if=/tmp/b of=/dev/vda bs=512 count=4 seek=8 conv=fsync 2>/dev/null
  echo "block written"
  mark remove
  rmmod virtio_blk
  ;;
esac
mark poweroff
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | sort | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -9 >"$work/initrd.gz"

# ---- 3. boot, one device and transport version at a time -----------------------------------------
qemu_ver=$(qemu-system-x86_64 --version | sed -n '1s/^QEMU emulator version //p')
use_kvm=no
if [ "$accel" = kvm ] || { [ "$accel" = auto ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  use_kvm=yes
fi
printf '%s\n' memory_region_ops_read memory_region_ops_write virtio_mmio_setting_irq >"$work/events"

for dev in $devices; do
  for ver in $versions; do
    name="linux-$dev-v$ver"
    log="$work/$name.trace"
    serial="$work/$name.serial"
    case "$dev" in
    entropy) devargs=(-device virtio-rng-device) ;;
    block)
      truncate -s 1M "$work/disk.img"
      devargs=(-drive "if=none,id=d0,format=raw,file=$work/disk.img" -device virtio-blk-device,drive=d0)
      ;;
    esac
    legacy=off
    [ "$ver" = 1 ] && legacy=on
    accel_args=(-accel tcg)
    [ "$use_kvm" = yes ] && accel_args=(-accel kvm)
    echo "capture-linux-trace: booting $name ($(echo "${accel_args[1]}" | tr a-z A-Z))" >&2
    start=$(date +%s)
    # tsc_early_khz: under TCG, microvm offers no clock the kernel can calibrate the TSC
    # against (no HPET, no PM timer, PIT calibration fails), and boot then stalls in timer
    # setup; giving the frequency outright avoids the calibration.
    # ioeventfd=off: QueueNotify writes then reach the device model (and the trace) instead
    # of being absorbed by an eventfd.
    timeout "${VCTRACE_TIMEOUT:-180}" qemu-system-x86_64 -M microvm -m 256 -smp 1 "${accel_args[@]}" \
      -nodefaults -no-user-config -display none -no-reboot \
      -serial "file:$serial" \
      -global "virtio-mmio.force-legacy=$legacy" -global virtio-mmio.ioeventfd=off \
      "${devargs[@]}" \
      -kernel "$kdir/vmlinuz" -initrd "$work/initrd.gz" \
      -append "console=ttyS0 quiet panic=-1 tsc_early_khz=2000000 vctrace.device=$dev" \
      -trace "events=$work/events" -D "$log" ||
      die "QEMU failed or timed out for $name (serial log follows)$(printf '\n'; tail -n 30 "$serial")"
    secs=$(($(date +%s) - start))
    grep -q "VCTRACE phase poweroff" "$serial" ||
      die "$name: the guest did not reach poweroff (serial log follows)$(printf '\n'; tail -n 30 "$serial")"

    # ---- 4. extract ----------------------------------------------------------------------------
    header=$(printf '{"trace":"%s","format":1,"device":"%s","transport_version":%s,"kernel":"%s %s","busybox":"busybox-static %s","qemu":"%s","machine":"microvm","accel":"%s","captured":"scripts/capture-linux-trace.sh --device %s --version %s --accel %s","guest":"modprobe virtio_mmio; modprobe the device driver; I/O; rmmod the device driver; poweroff -f"}' \
      "$name" "$dev" "$ver" "$kpkg" "$kver_pkg" "$bb_ver" "$qemu_ver" "${accel_args[1]}" "$dev" "$ver" "${accel_args[1]}")
    {
      echo "$header"
      awk -f "$here/capture-linux-trace.awk" "$log" "$log"
    } >"$work/$name.jsonl" || die "$name: extracting the trace failed"
    mv "$work/$name.jsonl" "$out/$name.jsonl"
    echo "capture-linux-trace: $name: $(($(wc -l <"$out/$name.jsonl") - 1)) events in ${secs}s -> $out/$name.jsonl" >&2
  done
done
