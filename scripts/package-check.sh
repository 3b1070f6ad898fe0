#!/usr/bin/env bash
# `cargo package` of both crates (reference device and harness), verified (each package is
# built from its .crate the way a registry user would get it), and a check that the harness
# package carries the specs it embeds: requirements.json and every case of specs/sequences.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
if ! cargo package --workspace --locked --allow-dirty >"$log" 2>&1; then
  cat "$log"
  rm -f "$log"
  exit 1
fi
grep -E "^ *(Packaged|Verifying)" "$log" || true
rm -f "$log"
list=$(cargo package -p virtio-conform --list --locked --allow-dirty 2>/dev/null)
grep -qx 'specs/requirements.json' <<<"$list" || { echo "package lacks specs/requirements.json"; exit 1; }
want=$(ls specs/sequences/*.jsonl | wc -l)
have=$(grep -c '^specs/sequences/.*\.jsonl$' <<<"$list" || true)
if [ "$want" != "$have" ]; then
  echo "package holds $have of the $want case files of specs/sequences"
  exit 1
fi
echo "package virtio-conform: specs/requirements.json and all $have case files included"
