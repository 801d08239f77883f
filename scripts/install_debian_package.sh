#!/usr/bin/env bash
# Install one Debian package the project can do without: Chromium for tests/test_mlflow_ui.py, tcmalloc for
# vLLM's CPU build (runner/machine/allocator.py). Idempotent and non-interactive; never fails the caller: when
# it cannot install, it prints one line saying why and what goes without, and exits 0.
#   scripts/install_debian_package.sh PACKAGE PRESENT WITHOUT
#     PACKAGE  the Debian package, e.g. chromium
#     PRESENT  a command that succeeds when what the package provides is already here
#     WITHOUT  what happens without it, e.g. "the MLflow UI test will skip"
set -uo pipefail
package=$1 present=$2 without=$3

if bash -c "$present" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install $package: not root, so it is not installed ($without)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install $package: no apt-get, so it is not installed ($without)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt_install() {
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$package" </dev/null >"$log" 2>&1
}
# A fresh image has no package lists (and old ones can point at removed files); only then is
# `apt-get update` worth its time.
if ! apt_install; then
  if ! { apt-get update -qq </dev/null >"$log" 2>&1 && apt_install; }; then
    reason=$(grep -E '^(E|W): ' "$log" | tail -n 1)
    [ -n "$reason" ] || reason=$(tail -n 1 "$log")
    echo "install $package: apt-get could not install it (${reason}); $without"
    exit 0
  fi
fi
if ! bash -c "$present" >/dev/null 2>&1; then
  echo "install $package: the package is installed but \`$present\` still fails ($without)"
fi
exit 0
