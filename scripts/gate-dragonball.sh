#!/usr/bin/env bash
# The Dragonball gate (gates/dragonball): the suite against Dragonball's virtio-blk behind its
# MmioV2Device, from the gate's own `cargo test`. Needs a usable /dev/kvm (Dragonball's
# transport needs a KVM VM with an in-kernel irqchip) and cmake (libz-sys); prints that it
# skipped, and why, where either cannot be had. Reports land in
# gates/dragonball/target/virtio-conform/. Also runs the diff_mmio fuzz body against the device
# (tests/fuzz.rs: the seeds and 300 fixed-seed mutations, the reference as the oracle).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/kvm ]; then
  echo "Dragonball gate skipped: /dev/kvm does not exist on this machine"
  exit 0
fi
if ! ( exec 3<>/dev/kvm ) 2>/dev/null; then
  echo "Dragonball gate skipped: /dev/kvm exists but cannot be opened for reading and writing by $(id -un)"
  exit 0
fi
if ! command -v cmake >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || true
  apt-get install -y -q --no-install-recommends cmake >/dev/null || true
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "Dragonball gate skipped: cmake (needed to build libz-sys) is unavailable and could not be installed"
  exit 0
fi
cd gates/dragonball
VIRTIO_CONFORM_REQUIRE_KVM=1 cargo test --locked --test gate --test fuzz -- --nocapture 2>&1
