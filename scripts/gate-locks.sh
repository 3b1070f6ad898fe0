#!/usr/bin/env bash
# Writes the Dragonball gate's lock files (gates/dragonball/Cargo.lock and
# gates/dragonball/fuzz/Cargo.lock) from the committed Cargo.lock.pinned beside each.
#
# A .pinned file is the lock file cargo wrote, less its `source` lines, which name the package
# registry. Every package in it that has a checksum comes from the registry, so the source line
# goes back in front of each checksum. The registry's name is copied from the workspace's own
# Cargo.lock. The result is byte for byte the lock file the gate was tested with, so
# `cargo test --locked` builds exactly those versions.
#
# After changing the gate's dependencies: run cargo there, then
#   grep -v '^source = "registry+' Cargo.lock > Cargo.lock.pinned
set -euo pipefail
cd "$(dirname "$0")/.."
# The first match only, without a pipe into head (under pipefail, sed's SIGPIPE would end the script).
src="$(sed -n '/^source = "registry+/{s/^source = "\([^"]*\)"$/\1/p;q}' Cargo.lock)"
[ -n "$src" ] || { echo "gate-locks.sh: no registry source line in Cargo.lock" >&2; exit 2; }
for d in gates/dragonball gates/dragonball/fuzz; do
  awk -v src="$src" '/^checksum = /{ print "source = \"" src "\"" } { print }' \
    "$d/Cargo.lock.pinned" >"$d/Cargo.lock"
done
