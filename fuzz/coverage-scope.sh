#!/usr/bin/env bash
# rustc wrapper that narrows cargo-fuzz's coverage instrumentation to the device side.
#
# `cargo fuzz build` instruments every crate of a fuzz binary (edge counters, compare tracing,
# stack depth). In this project most of a fuzz input's work is the harness's own: decoding the
# input, the driver model laying out rings, the oracles, the guest memory (`vm-memory` and the
# reference device's `virtio-conform-guest-ram`, which every descriptor, ring index and buffer
# goes through), the entropy device's ChaCha stream (`rand_chacha`). Counting and tracing that
# code costs libFuzzer more per input than the device code under test, and its edges tell the
# fuzzer nothing about the device. This wrapper leaves those crates out of the
# instrumentation, so coverage feedback comes from the device side only (the reference device
# `virtio-reference-device`, `virtio-queue`, a third-party device crate).
# fuzz/RESULTS.md has the measurements (speed and coverage reached, with and without).
#
# Wired in by the repository's .cargo/config.toml (`build.rustc-wrapper`), so a plain
# `cargo fuzz build` / `cargo fuzz run` from the repository uses it. It changes nothing in a
# build without cargo-fuzz's `-Cpasses=sancov-module` (ordinary builds and tests).
#
# bash, not sh: cargo hands rustc variables whose names hold a dash (CARGO_BIN_EXE_<bin> for
# integration tests), and dash drops such variables from the environment it passes on, so an
# `env!("CARGO_BIN_EXE_virtio-conform")` would not compile through an sh wrapper.
#
# Environment:
#   VIRTIO_CONFORM_FUZZ_COVERAGE=all     instrument every crate (cargo-fuzz's own default)
#   VIRTIO_CONFORM_FUZZ_UNINSTRUMENTED   space-separated package names to leave out
#                                        (default below)
# A value other than "all" in the first is an error (exit 2), so a typo cannot silently
# pick the narrow build.
rustc="$1"
shift

skip="${VIRTIO_CONFORM_FUZZ_UNINSTRUMENTED-virtio-conform virtio-conform-guest-ram vm-memory arbitrary derive_arbitrary rand_chacha rand_core ppv-lite86}"
case "${VIRTIO_CONFORM_FUZZ_COVERAGE:-}" in
  "") ;;
  all) exec "$rustc" "$@" ;;
  *)
    echo "coverage-scope.sh: VIRTIO_CONFORM_FUZZ_COVERAGE must be unset or 'all', not '$VIRTIO_CONFORM_FUZZ_COVERAGE'" >&2
    exit 2
    ;;
esac

case " $skip " in
  *" ${CARGO_PKG_NAME:-?} "*) ;;
  *) exec "$rustc" "$@" ;;
esac

# Drop the sanitizer-coverage pass for this crate; the -Cllvm-args that tune it are then inert.
for arg do
  shift
  [ "$arg" = "-Cpasses=sancov-module" ] || set -- "$@" "$arg"
done
exec "$rustc" "$@"
