#!/usr/bin/env bash
# `cargo install --path harness` from a copy of the checkout, the copy deleted, then the
# installed binary runs the whole suite from a directory outside any checkout: the catalog
# and the cases travel inside the binary. Shares target/ so registry dependencies built by
# earlier release builds are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$tmp" --one-top-level=src
CARGO_TARGET_DIR="$root/target" cargo install --quiet --locked --path "$tmp/src/harness" --root "$tmp/inst"
rm -rf "$tmp/src"
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
for dev in entropy block; do
  "$tmp/inst/bin/virtio-conform" run --target reference --device "$dev" | tail -1
done
echo "installed binary ran the suite from outside the checkout (source copy deleted)"
