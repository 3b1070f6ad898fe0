#!/usr/bin/env bash
# Side-by-side throughput of this project's `queue_chain` fuzz target and rust-vmm vm-virtio's
# own `virtio_queue` fuzz target, on this machine, in the same session.
#
# Usage:
#   fuzz/bench-vs-rust-vmm.sh <vm-virtio checkout>
#   VM_VIRTIO_DIR=<vm-virtio checkout> fuzz/bench-vs-rust-vmm.sh
#
# The vm-virtio checkout is a clone of the rust-vmm/vm-virtio repository kept OUTSIDE this
# tree (it is never committed here); its `fuzz/` package is built in place with its own
# target directory.
#
# Two measurements:
#   exec/s     libFuzzer's own figure (stat::average_exec_per_sec), alternating the two
#              targets ROUNDS times (default 3) for SECONDS each (default 20), each from its
#              own seeds (ours: corpora/<target>; vm-virtio's: the files its fuzz README says to
#              generate first, `cargo test --package common --lib <target>` in its fuzz/,
#              which writes fuzz/corpus/<target>/ inside that checkout; PEER_SEEDS=none runs
#              the peer from an empty corpus instead, as this script did before),
#              libFuzzer seed = round number, one process each (no -fork/-jobs). Each run
#              starts from a fresh copy of its seeds. Sensitive to the machine's load: compare
#              only figures from the same run.
#   instr/exec (CALLGRIND=1) instructions per fuzzing iteration under callgrind: the
#              instruction count of RUNS iterations (default 20000) minus that of 0 iterations,
#              divided by RUNS. Load-immune; includes libFuzzer's mutation and feedback work.
#
# Environment: SECONDS_PER_RUN, ROUNDS, CALLGRIND (1 = also count instructions), RUNS,
# SKIP_BUILD (1 = use existing binaries), OURS_TARGET (default queue_chain), PEER_TARGET (a
# target of vm-virtio's fuzz/ package, default virtio_queue; `vsock` is the peer of
# `vsock_packets`, `blk` the closest one of the block-device side of `diff_mmio`).
# Our fuzz binaries are built the repository's way: through fuzz/coverage-scope.sh (only the
# device side instrumented; .cargo/config.toml). The peer is built with cargo-fuzz's defaults.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
peer="${1:-${VM_VIRTIO_DIR:-}}"
if [ -z "$peer" ] || [ ! -d "$peer/fuzz" ]; then
  echo "usage: $0 <vm-virtio checkout>   (or VM_VIRTIO_DIR=...): a clone of rust-vmm/vm-virtio with its fuzz/ folder" >&2
  exit 2
fi
peer="$(cd "$peer" && pwd)"
secs="${SECONDS_PER_RUN:-20}"
rounds="${ROUNDS:-3}"
ours_target="${OURS_TARGET:-queue_chain}"
peer_target="${PEER_TARGET:-virtio_queue}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building $ours_target (cargo fuzz build -s none)" >&2
  [ -f "$here/fuzz/Cargo.lock" ] || cp "$here/Cargo.lock" "$here/fuzz/Cargo.lock"
  (cd "$here" && cargo fuzz build -s none "$ours_target") >&2
  echo "== building vm-virtio's $peer_target (cargo fuzz build -s none)" >&2
  (cd "$peer" && cargo fuzz build -s none "$peer_target") >&2
fi
peer_seeds="$peer/fuzz/corpus/$peer_target"
if [ "${PEER_SEEDS:-}" = none ]; then
  peer_seeds=""
elif [ ! -d "$peer_seeds" ]; then
  echo "== generating vm-virtio's $peer_target seeds (cargo test --package common --lib $peer_target)" >&2
  (cd "$peer/fuzz" && cargo test --quiet --package common --lib "$peer_target") >&2
  [ -d "$peer_seeds" ] || { echo "vm-virtio's tests wrote no $peer_seeds" >&2; exit 2; }
fi
ours_bin="$here/fuzz/target/$triple/release/$ours_target"
peer_bin="$peer/fuzz/target/$triple/release/$peer_target"
for b in "$ours_bin" "$peer_bin"; do
  [ -x "$b" ] || { echo "missing binary $b" >&2; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export VIRTIO_CONFORM_MUTANT=reference

# run <name> <binary> <round> [seed dirs...]: prints "exec_per_sec edges"
run() {
  local name="$1" bin="$2" round="$3"
  shift 3
  local seeds="$1"
  shift
  rm -rf "$work/corpus-$name"
  mkdir -p "$work/corpus-$name"
  if [ -n "$seeds" ]; then
    find "$seeds" -maxdepth 1 -type f -exec cp {} "$work/corpus-$name/" \;
  fi
  "$bin" "$work/corpus-$name" "$@" -max_total_time="$secs" -seed="$round" \
    -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 >"$work/$name.log" 2>&1 || {
    echo "!! $name stopped early (finding or failure); see its log:" >&2
    tail -n 20 "$work/$name.log" >&2
    return 1
  }
  local eps edges
  eps="$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$work/$name.log" | tail -n 1)"
  edges="$(grep -oE 'cov: [0-9]+' "$work/$name.log" | tail -n 1 | awk '{print $2}')"
  echo "${eps:-0} ${edges:-0}"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); peer seeds: ${peer_seeds:-none (empty corpus)}"
printf '%-6s %-22s %-22s %s\n' round "$ours_target exec/s (edges)" "$peer_target exec/s (edges)" ratio
ratios=()
for r in $(seq 1 "$rounds"); do
  read -r o oe < <(run ours "$ours_bin" "$r" "$here/corpora/$ours_target")
  read -r p pe < <(run peer "$peer_bin" "$r" "$peer_seeds")
  ratio="$(awk -v a="$o" -v b="$p" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')"
  ratios+=("$ratio")
  printf '%-6s %-22s %-22s %s\n' "$r" "$o ($oe)" "$p ($pe)" "$ratio"
done
median="$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
echo "median ratio $ours_target / $peer_target: $median   (load average after: $(cut -d' ' -f1-3 /proc/loadavg))"

if [ "${CALLGRIND:-0}" = 1 ]; then
  command -v valgrind >/dev/null || { echo "CALLGRIND=1 needs valgrind" >&2; exit 2; }
  n="${RUNS:-20000}"
  # instr <name> <binary> <runs> [seed dirs...]: total instructions (Ir) of the process
  instr() {
    local name="$1" bin="$2" runs="$3"
    shift 3
    rm -rf "$work/cg-$name"
    mkdir -p "$work/cg-$name"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" "$work/cg-$name" "$@" \
      -runs="$runs" -seed=1 -rss_limit_mb=0 -timeout=0 >"$work/cg-$name.log" 2>&1 || true
    sed -n 's/^summary:[[:space:]]*//p' "$work/cg.out" | head -n 1
  }
  o0="$(instr ours "$ours_bin" 0 "$here/corpora/$ours_target")"
  on="$(instr ours "$ours_bin" "$n" "$here/corpora/$ours_target")"
  p0="$(instr peer "$peer_bin" 0 ${peer_seeds:+"$peer_seeds"})"
  pn="$(instr peer "$peer_bin" "$n" ${peer_seeds:+"$peer_seeds"})"
  awk -v o0="$o0" -v on="$on" -v p0="$p0" -v pn="$pn" -v n="$n" -v t="$ours_target" -v pt="$peer_target" 'BEGIN {
    oi = (on - o0) / n; pi = (pn - p0) / n;
    printf "instructions per iteration (callgrind, %d iterations, seed 1): %s %.0f, %s %.0f, ratio of rates %.2f\n", n, t, oi, pt, pi, pi / oi
  }'
fi
