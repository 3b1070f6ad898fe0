#!/bin/sh
# Installs qemu-system-x86_64 for the `qemu` target: QEMU 10.x from bookworm-backports on
# Debian 12, the release's own qemu-system-x86 on newer Debian-family systems.
#
# Idempotent: does nothing when qemu-system-x86_64 is already on PATH. When it cannot
# install (no apt-get, not root, no archive URI in the apt configuration, apt failure) it
# prints why, prints "QEMU unavailable", and exits 0: the QEMU tests then skip with a reason.
#
# The archive URI is taken from this machine's own apt configuration; none is hard-coded.

unavailable() {
  echo "install-qemu: $*" >&2
  echo "QEMU unavailable: $*"
  exit 0
}

if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  qemu-system-x86_64 --version | head -n 1
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || unavailable "apt-get not found (not a Debian-family system)"
[ "$(id -u)" = "0" ] || unavailable "not running as root; run: sudo sh $0"

export DEBIAN_FRONTEND=noninteractive
codename=""
if [ -f /etc/os-release ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
fi

if [ "$codename" != "bookworm" ]; then
  # Newer releases carry a recent QEMU in their own suite.
  apt-get update -q || unavailable "apt-get update failed"
  apt-get install -y -q --no-install-recommends qemu-system-x86 \
    || unavailable "apt-get install of qemu-system-x86 failed"
else
  # Bookworm has QEMU 7.2, which conflicts with a backported qemu-utils; take 10.x from
  # bookworm-backports, from the same archive the machine already uses.
  uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(sed -n -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' /etc/apt/sources.list | head -n 1)
  fi
  [ -n "$uri" ] || unavailable "no Debian archive URI found in the apt configuration"

  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -qs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; then
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ -f "$keyring" ]; then
      echo "deb [signed-by=$keyring] $uri bookworm-backports main" > "$list" \
        || unavailable "cannot write $list"
    else
      echo "deb $uri bookworm-backports main" > "$list" || unavailable "cannot write $list"
    fi
  fi

  apt-get update -q || unavailable "apt-get update failed"
  apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 \
    || unavailable "apt-get install of qemu-system-x86 from bookworm-backports failed"
fi

command -v qemu-system-x86_64 >/dev/null 2>&1 \
  || unavailable "qemu-system-x86_64 still not on PATH after installing"
qemu-system-x86_64 --version | head -n 1
