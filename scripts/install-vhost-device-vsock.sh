#!/bin/sh
# Installs rust-vmm's vhost-device-vsock (the vhost-user vsock backend behind QEMU's
# vhost-user-vsock-device in `--target qemu --device vsock`) with `cargo install --locked`
# from the crate registry cargo is configured with, when it is not on PATH already.
#
# Idempotent: prints the installed version and does nothing else when the binary is found.
# When it cannot install (no cargo, build failure) it prints why and
# "vhost-device-vsock unavailable", and exits 0: the vsock QEMU tests then skip with a reason.
# The version is pinned so every machine tests the same backend; 0.3.0 builds on stable.

VERSION=0.3.0

unavailable() {
  echo "install-vhost-device-vsock: $*" >&2
  echo "vhost-device-vsock unavailable: $*"
  exit 0
}

found() {
  command -v vhost-device-vsock >/dev/null 2>&1 && vhost-device-vsock --version >/dev/null 2>&1
}

if found; then
  vhost-device-vsock --version | head -n 1
  exit 0
fi

command -v cargo >/dev/null 2>&1 || unavailable "cargo not found"
echo "install-vhost-device-vsock: cargo install vhost-device-vsock $VERSION (takes a few minutes)"
CARGO_INCREMENTAL=0 cargo install --locked --quiet vhost-device-vsock --version "$VERSION" \
  || unavailable "cargo install of vhost-device-vsock $VERSION failed"
# cargo installs into its own bin folder, which may not be on PATH yet.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
  *":$cargo_bin:"*) ;;
  *) PATH="$cargo_bin:$PATH" ;;
esac
found || unavailable "vhost-device-vsock still not runnable after installing (is $cargo_bin on PATH?)"
vhost-device-vsock --version | head -n 1
