#!/usr/bin/env bash
# Time to detection per mutant and fuzz target.
#
# Each run starts a fuzz binary with the mutant pinned (VIRTIO_CONFORM_MUTANT=<name>) on an
# empty corpus with libFuzzer seed <run>, in fork mode so that fuzzing goes on after a crash.
# Every crash artifact is replayed on its own, against the mutant and against the reference
# (VIRTIO_CONFORM_MUTANT=reference): one that crashes the reference too is a bug of the
# reference (or of an oracle), not a detection of the mutant, and is counted separately. The
# run stops at the first artifact that crashes the mutant and not the reference, or after
# MAX_SECONDS. The time is wall-clock from the start of the
# binary (polling every 0.1 s).
#
# Output, tab-separated, one line per (mutant, target): the time of every run (`-` = not
# found), the median, and how many crashes were the reference's own.
#
# Equivalent by hand: VIRTIO_CONFORM_MUTANT=<name> cargo fuzz run -s none <target> <empty dir>
#   -- -max_total_time=60 -seed=<run>
#
# Environment: RUNS (default 3), MAX_SECONDS (default 60), MUTANTS (default: every mutant of
# reference-device/src/mutant.rs), TARGETS (default: queue_chain mmio_regs diff_mmio),
# KEEP (a folder: keep the first attributable crash of each pair as <target>/<mutant>),
# BIN_DIR (folder of the fuzz binaries; default target/<host>/release, e.g. another
# `cargo fuzz build --target-dir` such as a `--no-trace-compares` build).
# Build first: cargo fuzz build -s none
set -euo pipefail
cd "$(dirname "$0")"

runs="${RUNS:-3}"
max="${MAX_SECONDS:-60}"
bin="${BIN_DIR:-target/x86_64-unknown-linux-gnu/release}"
read -r -a targets <<<"${TARGETS:-queue_chain mmio_regs diff_mmio}"
if [ -n "${MUTANTS:-}" ]; then
  read -r -a mutants <<<"$MUTANTS"
else
  mapfile -t mutants < <(sed -n '/pub fn name(self)/,/^    }/p' ../reference-device/src/mutant.rs |
    grep -o '=> "[a-z0-9-]*"' | cut -d'"' -f2)
fi

work="$(mktemp -d)"
pid=""
# Each fuzz run is its own process group (setsid), stopped with SIGKILL as a whole: a fork-mode
# libFuzzer parent can hang in its SIGTERM handler, and its job processes must go too.
stop() { [ -n "$pid" ] && { kill -9 -- "-$pid" 2>/dev/null || true; }; wait "$pid" 2>/dev/null || true; pid=""; }
trap 'stop; rm -rf "$work"' EXIT

# One run; sets `found` to the detection time or `-`, and adds to `ref_bugs`.
one_run() {
  local m="$1" t="$2" r="$3"
  rm -rf "$work/c" "$work/art" && mkdir -p "$work/c" "$work/art"
  local start now f
  found="-"
  declare -A seen=()
  start=$(date +%s.%N)
  VIRTIO_CONFORM_MUTANT="$m" setsid "$bin/$t" "$work/c" -seed="$r" -max_total_time="$max" \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$work/art/" >"$work/log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for f in "$work"/art/*; do
      [ -f "$f" ] || continue
      [ -n "${seen[$f]:-}" ] && continue
      # The file may still be being written: wait until its size holds still.
      local size
      size=$(stat -c %s "$f")
      sleep 0.05
      [ "$size" = "$(stat -c %s "$f")" ] || continue
      seen[$f]=1
      if VIRTIO_CONFORM_MUTANT="$m" "$bin/$t" "$f" >/dev/null 2>&1; then
        continue # does not reproduce on its own
      fi
      if VIRTIO_CONFORM_MUTANT=reference "$bin/$t" "$f" >/dev/null 2>&1; then
        now=$(date +%s.%N)
        found=$(echo "$now - $start" | bc | awk '{printf "%.1f", $1}')
        if [ -n "${KEEP:-}" ] && [ ! -e "$KEEP/$t/$m" ]; then
          mkdir -p "$KEEP/$t" && cp "$f" "$KEEP/$t/$m"
        fi
        break 2
      else
        ref_bugs=$((ref_bugs + 1))
      fi
    done
    sleep 0.1
  done
  stop
}

printf 'mutant\ttarget\truns\tmedian_s\treference_crashes\n'
for m in "${mutants[@]}"; do
  for t in "${targets[@]}"; do
    times=()
    ref_bugs=0
    for r in $(seq 1 "$runs"); do
      one_run "$m" "$t" "$r"
      times+=("$found")
    done
    median=$(printf '%s\n' "${times[@]}" | sed 's/^-$/999999/' | sort -g |
      awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; if (m==999999) print "-"; else print m}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$t" "$(IFS=,; echo "${times[*]}")" "$median" "$ref_bugs"
  done
done
