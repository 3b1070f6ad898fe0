#!/usr/bin/env bash
# Wall time of the whole suite against the reference target (release build), median of N
# runs per device and transport version. Usage: scripts/bench-suite.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
cargo build --release --locked -q -p virtio-conform
bin=target/release/virtio-conform
total_ms=()
for dev in entropy block console net; do
  for ver in 2 1; do
    times=()
    for _ in $(seq "$n"); do
      s=$(date +%s%N)
      "$bin" run --target reference --device "$dev" --version "$ver" >/dev/null
      e=$(date +%s%N)
      times+=($(( (e - s) / 1000000 )))
    done
    med=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (n + 1) / 2 ))p")
    cases=$("$bin" run --target reference --device "$dev" --version "$ver" --format json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["results"]))')
    echo "reference $dev v$ver: $cases cases, median ${med} ms over $n runs"
    total_ms+=("$med")
  done
done
sum=0; for t in "${total_ms[@]}"; do sum=$((sum + t)); done
echo "all ${#total_ms[@]} runs: ${sum} ms"
