#!/usr/bin/env bash
# Installs the Debian packages serq's build and tests need, only those missing.
# Usage: scripts/setup.sh [extra-package ...]     e.g. scripts/setup.sh doxygen clang-14
set -euo pipefail

packages=(g++ cmake ninja-build libboost1.81-dev libboost-test1.81-dev libssl-dev chromium redis-server redis-tools "$@")

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages already installed, nothing to do"
  exit 0
fi

as_root=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

log="${TMPDIR:-/tmp}/serq-setup.log"
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0)
if ! { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: failed to install: ${missing[*]} (log: $log)" >&2
  exit 1
fi
echo "setup: installed ${missing[*]}"
