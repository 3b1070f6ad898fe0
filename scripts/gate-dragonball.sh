#!/usr/bin/env bash
# The Dragonball gate (gates/dragonball): the suite against Dragonball's virtio-blk behind its
# MmioV2Device, from the gate's own `cargo test`. Needs a usable /dev/kvm (Dragonball's
# transport needs a KVM VM with an in-kernel irqchip) and cmake (libz-sys); prints that it
# skipped, and why, where either cannot be had. Reports land in
# gates/dragonball/target/virtio-conform/. Also runs the diff_mmio fuzz body against the device
# (tests/fuzz.rs: the seeds and 300 fixed-seed mutations, the reference as the oracle) and
# its coverage-guided libFuzzer target for a time box (below).
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
bash scripts/gate-locks.sh
cd gates/dragonball
rc=0
VIRTIO_CONFORM_REQUIRE_KVM=1 cargo test --locked --lib --test gate --test fuzz -- --nocapture 2>&1 || rc=$?

# The coverage-guided libFuzzer target (gates/dragonball/fuzz) for a time box of
# DRAGONBALL_FUZZ_SECONDS (default 60), from the committed diff_mmio seeds: it ends with an
# artifact only on a crash, a hang, a failed access or a broken adapter (divergences from the
# reference are printed, once per kind; src/fuzz_policy.rs). One line says how it went:
# "Dragonball fuzz time box: passed|failed|skipped ..." (scripts/test.sh counts it).
secs="${DRAGONBALL_FUZZ_SECONDS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked >/dev/null 2>&1 || true
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "Dragonball fuzz time box: skipped (cargo-fuzz is not installed and could not be)"
elif ! (cd fuzz && cargo fuzz build -s none diff_mmio 2>&1); then
  echo "Dragonball fuzz time box: failed (cargo fuzz build)"
  rc=1
else
  work="$(mktemp -d)"
  fuzz_rc=0
  (cd fuzz && cargo fuzz run -s none diff_mmio "$work" ../../../corpora/diff_mmio -- \
    -max_total_time="$secs" -seed=1 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/") >"$work.log" 2>&1 || fuzz_rc=$?
  grep -E '^divergence \(noted|^stat::(number_of_executed_units|average_exec_per_sec)|^Done ' "$work.log" | tail -n 12 || true
  runs="$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$work.log" | tail -n 1)"
  if [ "$fuzz_rc" -eq 0 ]; then
    echo "Dragonball fuzz time box: passed (${secs}s, ${runs:-?} inputs, no crash, hang or failed access)"
  else
    tail -n 30 "$work.log"
    echo "Dragonball fuzz time box: failed (exit $fuzz_rc; artifact in $work)"
    rc=1
  fi
  rm -f "$work.log"
fi
exit "$rc"
