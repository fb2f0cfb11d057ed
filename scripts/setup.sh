#!/usr/bin/env bash
# Prepare a Debian 12 machine for sandboxd: system packages and the Python environment.
# Idempotent: re-running only installs what is missing. Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: a throwaway server for the store tests (tests/support/postgres.py); the setup
# only installs it, nothing is started or enabled here. e2fsprogs: mkfs.ext4 for the sandboxes'
# writable layers (src/sandboxd/backends/local/disk.py).
APT_PACKAGES=(python3 python3-venv bubblewrap mmdebstrap iproute2 iptables uidmap linux-libc-dev openssl
              postgresql e2fsprogs)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import sandboxd, pytest' 2>/dev/null \
   || [[ pyproject.toml -nt .venv/.installed ]]; then
  echo "setup: installing Python packages into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch .venv/.installed
fi
