#!/usr/bin/env bash
# Fuzz smoke test on the stable toolchain: build every cargo-fuzz target without a sanitizer
# (`-s none`, the only mode stable supports) and run each for a short time box against the
# reference device (no mutant), starting from the committed seed corpus.
#
# Exits non-zero when a target does not build or finds something; the input is then in
# fuzz/artifacts/<target>/ and replays with
#   cargo test -p virtio-conform --test fuzz_replay      (after copying it into corpora/)
#   fuzz/target/<host triple>/release/<target> <artifact>
#
# Environment:
#   FUZZ_SECONDS   time box per target in seconds (default 60; 200000 runs take 10-25 s here)
#   FUZZ_TARGETS   space-separated targets (default: queue_chain mmio_regs diff_mmio packed_chain device_chains vsock_packets)
#   FUZZ_SEED      libFuzzer seed (default 1)
#   FUZZ_RUNS      inputs per target (default 200000); with a fixed seed and the committed
#                  corpus the run is the same on every machine fast enough to finish it
#                  inside FUZZ_SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
read -r -a targets <<<"${FUZZ_TARGETS:-queue_chain mmio_regs diff_mmio packed_chain device_chains vsock_packets}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# The smoke run is against the reference: `reference` also makes diff_mmio compare the
# reference with itself instead of picking a mutant from the first input byte.
export VIRTIO_CONFORM_MUTANT=reference

# The fuzz package is its own workspace; start its lock file from the root one so the shared
# dependencies build at the same versions (cargo adds libfuzzer-sys to it).
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock

echo "== cargo fuzz build -s none (all targets)"
cargo fuzz build -s none

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
for t in "${targets[@]}"; do
  echo "== cargo fuzz run -s none $t (${seconds}s)"
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  ls -1 "fuzz/artifacts/$t" >"$work/$t.before"
  # New corpus entries go to a scratch folder; the committed seeds are read only.
  if ! cargo fuzz run -s none "$t" "$work/$t" "corpora/$t" -- \
    -max_total_time="$seconds" -runs="${FUZZ_RUNS:-200000}" -seed="${FUZZ_SEED:-1}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 2>"$work/$t.log"; then
    status=1
    echo "!! $t: finding or failure:"
    # The finding (or the panic of the device) is the panic message of the fuzz target.
    if grep -q 'panicked at' "$work/$t.log"; then
      grep -A 3 'panicked at' "$work/$t.log" | head -n 8
    else
      tail -n 30 "$work/$t.log"
    fi
    ls -1 "fuzz/artifacts/$t" | grep -vxF -f "$work/$t.before" | sed "s|^|   new artifact: fuzz/artifacts/$t/|" || true
  else
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec)|Done [0-9]+ runs' "$work/$t.log" || true
  fi
done
exit "$status"
