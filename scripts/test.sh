#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, then runs them all.
#   1. QEMU (for the qemu target; the QEMU tests skip with the reason when it cannot be had)
#   2. every Rust test of the workspace (unit, integration, doc tests, corpus replay)
#   3. the conformance suite against the reference (v1/v2, entropy/block) and, with the
#      committed expectations, against QEMU
#   4. the Dragonball gate (gates/dragonball) where /dev/kvm is usable, "skipped" elsewhere
#   5. cargo-fuzz: build every fuzz target with `-s none` and run each for a short time box
# QEMU and Chromium are installed from Debian's packages when missing; where that is not
# possible the tests that need them say they skipped and why.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== install: QEMU"
sh scripts/install-qemu.sh
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  export VIRTIO_CONFORM_REQUIRE_QEMU=1
fi

echo "== install: vhost-device-vsock (the vhost-user backend of QEMU's vsock device)"
sh scripts/install-vhost-device-vsock.sh
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
fi
if command -v vhost-device-vsock >/dev/null 2>&1; then
  export VIRTIO_CONFORM_REQUIRE_VHOST_DEVICE_VSOCK=1
fi

echo "== install: Chromium (renders the matrix page in a test)"
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || true
  apt-get install -y -q --no-install-recommends chromium >/dev/null || echo "Chromium unavailable: apt-get install failed"
fi
if command -v chromium >/dev/null 2>&1; then
  export VIRTIO_CONFORM_REQUIRE_CHROMIUM=1
else
  echo "Chromium unavailable: the matrix rendering test will say it skipped"
fi

echo "== install: vhost-device-rng (a vhost-user back-end for --target vhost-user)"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v vhost-device-rng >/dev/null 2>&1; then
  cargo install vhost-device-rng --locked --quiet \
    || echo "vhost-device-rng unavailable: cargo install failed"
fi

# The closing line counts real tests: every test of every `cargo test` binary (its "test
# result:" lines) and every suite run below, one each.
passed=0
failed=0
skipped=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
count_cargo_tests() {
  local p f i
  p=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^test result: [a-zA-Z]*\. [0-9]* passed; \([0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  i=$(sed -n 's/^test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed; \([0-9]*\) ignored.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + i))
}
suite_run() {
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $*"
  fi
}
finish() {
  echo "tests: $passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ]
}

echo "== cargo test (workspace)"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || true
count_cargo_tests
if ! grep -q '^test result:' "$log" || grep -q '^error' "$log"; then
  failed=$((failed + 1))
  echo "FAILED: cargo test did not build or run"
fi

echo "== suite: reference target"
cargo build --release --locked -p virtio-conform
bin=target/release/virtio-conform
for dev in entropy block console net balloon; do
  for ver in 2 1; do
    suite_run "$bin" run --target reference --device "$dev" --version "$ver" --strict
  done
done
for dev in entropy block console net; do
  suite_run "$bin" run --target reference --device "$dev" --version 2 --ring packed --strict
done
# The socket device (vsock, §5.10) has no legacy interface: version 2 only.
suite_run "$bin" run --target reference --device vsock --version 2 --strict
suite_run "$bin" run --target reference --device vsock --version 2 --ring packed --strict

echo "== suite: reference target under each driver personality"
for drv in linux netbsd freebsd rcore legacy; do
  for dev in entropy block console net balloon; do
    for ver in 2 1; do
      suite_run "$bin" run --target reference --device "$dev" --version "$ver" --driver "$drv" --strict
    done
  done
  suite_run "$bin" run --target reference --device vsock --version 2 --driver "$drv" --strict
done

echo "== suite: vhost-user target (vhost-device-rng started by the harness)"
if ! command -v vhost-device-rng >/dev/null 2>&1; then
  echo "skipped: vhost-device-rng is not installed (see the install step above)"
  skipped=$((skipped + 1))
elif [ "$(uname -s)" != "Linux" ]; then
  echo "skipped: the vhost-user target needs Linux (memfd guest RAM, eventfds)"
  skipped=$((skipped + 1))
else
  suite_run "$bin" run --target vhost-user --backend vhost-device-rng --device entropy --strict \
    --expectations specs/expectations/vhost-user-rng.json
fi

echo "== suite: vhost-user target (vhost-device-vsock started by the harness, host side on its hybrid vsock socket)"
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
  echo "skipped: vhost-device-vsock is not installed (see the install step above)"
  skipped=$((skipped + 1))
elif [ "$(uname -s)" != "Linux" ]; then
  echo "skipped: the vhost-user target needs Linux (memfd guest RAM, eventfds)"
  skipped=$((skipped + 1))
else
  suite_run "$bin" run --target vhost-user --backend vhost-device-vsock --device vsock --strict \
    --expectations specs/expectations/vhost-user-vsock.json
fi

echo "== trace replay: the committed Linux traces against the reference configured like the traced device"
for tr in traces/*.jsonl; do
  suite_run "$bin" trace replay "$tr" --target reference --strict
done

if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "== trace replay: the committed Linux traces against QEMU"
  for tr in traces/*.jsonl; do
    suite_run "$bin" trace replay "$tr" --target qemu --strict
  done
  echo "== suite: QEMU with the committed expectations"
  for dev in entropy block; do
    for ver in 2 1; do
      ex="specs/expectations/qemu-v$ver.json"
      args=()
      [ -f "$ex" ] && args=(--expectations "$ex")
      suite_run "$bin" run --target qemu --device "$dev" --version "$ver" --strict "${args[@]}"
    done
  done
  echo "== suite: QEMU under each driver personality (block v2, entropy v1)"
  for drv in linux netbsd freebsd rcore legacy; do
    suite_run "$bin" run --target qemu --device block --version 2 --driver "$drv" --strict \
      --expectations specs/expectations/qemu-v2.json
    suite_run "$bin" run --target qemu --device entropy --version 1 --driver "$drv" --strict \
      --expectations specs/expectations/qemu-v1.json
  done
  # The console's port 0 is a virtconsole on a chardev socket the harness connects to.
  for ver in 2 1; do
    suite_run "$bin" run --target qemu --device console --version "$ver" --strict \
      --expectations "specs/expectations/qemu-console-v$ver.json"
  done
  # virtio-net on a stream netdev the harness holds (its own expectations: the generic
  # transport entries plus the net findings)
  for ver in 2 1; do
    suite_run "$bin" run --target qemu --device net --version "$ver" --strict \
      --expectations "specs/expectations/qemu-net-v$ver.json"
  done
  # virtio-balloon-device, its host side over QMP (balloon, query-balloon, guest-stats)
  for ver in 2 1; do
    suite_run "$bin" run --target qemu --device balloon --version "$ver" --strict \
      --expectations "specs/expectations/qemu-balloon-v$ver.json"
  done
  # vhost-user-vsock-device served by rust-vmm's vhost-device-vsock; the host side of its
  # connections through the backend's hybrid vsock sockets (version 2 only: vsock is modern).
  if command -v vhost-device-vsock >/dev/null 2>&1; then
    suite_run "$bin" run --target qemu --device vsock --version 2 --strict \
      --expectations specs/expectations/qemu-vsock-v2.json
  else
    echo "== suite: QEMU vsock skipped: vhost-device-vsock unavailable (see install step above)"
  fi
  echo "== suite: QEMU with packed=on, every layout-neutral case on a packed ring (§2.8)"
  for dev in entropy block; do
    suite_run "$bin" run --target qemu --device "$dev" --version 2 --ring packed --strict \
      --expectations specs/expectations/qemu-v2-packed.json
  done
  for dev in console net; do
    suite_run "$bin" run --target qemu --device "$dev" --version 2 --ring packed --strict \
      --expectations "specs/expectations/qemu-$dev-v2-packed.json"
  done
else
  echo "== suite: QEMU skipped: qemu-system-x86_64 unavailable (see install step above)"
fi

echo "== cargo install: the installed binary runs the suite outside the checkout"
suite_run bash scripts/install-check.sh

echo "== cargo package: the three crates (guest-ram, reference-device, harness), the harness carrying its specs"
suite_run bash scripts/package-check.sh

# The gate's own `cargo test` results count like the workspace's; a gate that skipped (no
# usable /dev/kvm or cmake) counts as one skipped test; a gate that failed to build or run
# counts as one failure. Either way the script goes on to its closing line.
echo "== gate: Dragonball (gates/dragonball, needs /dev/kvm)"
gate_rc=0
bash scripts/gate-dragonball.sh 2>&1 | tee "$log" || gate_rc=$?
if grep -q '^Dragonball gate skipped:' "$log"; then
  skipped=$((skipped + 1))
else
  count_cargo_tests
  # The gate's libFuzzer time box counts as one test.
  if grep -q '^Dragonball fuzz time box: passed' "$log"; then
    passed=$((passed + 1))
  elif grep -q '^Dragonball fuzz time box: skipped' "$log"; then
    skipped=$((skipped + 1))
  elif grep -q '^Dragonball fuzz time box: failed' "$log"; then
    failed=$((failed + 1))
    gate_rc=0 # counted here, not again below
  fi
  if [ "$gate_rc" -ne 0 ] && ! grep -q '^test result: FAILED' "$log"; then
    failed=$((failed + 1))
    echo "FAILED: the Dragonball gate did not build or run (exit $gate_rc)"
  fi
fi

if [ -f scripts/fuzz-smoke.sh ]; then
  echo "== fuzz smoke (cargo fuzz, stable, -s none)"
  suite_run bash scripts/fuzz-smoke.sh
fi
finish
