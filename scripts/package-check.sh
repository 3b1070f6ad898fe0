#!/usr/bin/env bash
# `cargo package` of the three crates (guest memory, reference device and harness), verified (each package is
# built from its .crate the way a registry user would get it), and a check that the harness
# package carries the specs it embeds: requirements.json and every case of specs/sequences.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
# Cargo verifies the harness package against the reference-device package through a local
# registry whose sources it unpacks under $CARGO_HOME/registry/src and reuses while a copy of
# the same name and version is there: an earlier run's copy would be built instead of this
# checkout's. The crates stay at 0.1.0 until published, so drop those copies first.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rm -rf "$cargo_home"/registry/src/*/virtio-reference-device-0.1.0 \
  "$cargo_home"/registry/src/*/virtio-conform-0.1.0 \
  "$cargo_home"/registry/src/*/virtio-conform-guest-ram-0.1.0
# Registry packages are never rebuilt once built (their fingerprint is name and version), so
# an earlier verification's build of reference-device or guest-ram would be linked too.
target_dir="${CARGO_TARGET_DIR:-target}"
rm -rf "$target_dir"/debug/.fingerprint/virtio-reference-device-* \
  "$target_dir"/debug/deps/libvirtio_reference_device-* \
  "$target_dir"/debug/deps/virtio_reference_device-* \
  "$target_dir"/debug/.fingerprint/virtio-conform-guest-ram-* \
  "$target_dir"/debug/deps/libguest_ram-* \
  "$target_dir"/debug/deps/guest_ram-*
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
