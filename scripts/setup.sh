#!/usr/bin/env bash
# Prepare a Debian 12 machine for sandboxd: system packages and the Python environment.
# Idempotent: re-running only installs what is missing. Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the web console's browser tests (tests/e2e/test_console_browser.py, Playwright).
# postgresql: a throwaway server for the store tests (tests/support/postgres.py); the setup
# only installs it, nothing is started or enabled here. e2fsprogs: mkfs.ext4 for the sandboxes'
# writable layers (src/sandboxd/backends/local/disk.py). gcc, libc6-dev: the native keeper
# (src/sandboxd/backends/local/native/keeper.c, built below). skopeo, umoci: `sandboxd images
# pull` and OCI imports; docker-registry, apache2-utils (htpasswd): the registry the image
# tests run on loopback (nothing is started or enabled here).
APT_PACKAGES=(python3 python3-venv bubblewrap mmdebstrap iproute2 iptables uidmap linux-libc-dev openssl
              postgresql e2fsprogs gcc libc6-dev skopeo umoci docker-registry apache2-utils
              chromium)
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

# The native keeper each idle sandbox runs on the host side (keeper.py says why); rebuilt
# when its source is newer. Static, so it maps no shared library and costs ~0.1 MiB a copy.
native=src/sandboxd/backends/local/native
if [[ ! -x $native/sandboxd-keeper || $native/keeper.c -nt $native/sandboxd-keeper ]]; then
  echo "setup: building $native/sandboxd-keeper" >&2
  flags=(-O2 -Wall -Wextra -Werror -fstack-protector-strong -D_FORTIFY_SOURCE=2)
  for link in -static-pie -static ""; do
    # shellcheck disable=SC2086 # an empty $link adds nothing
    if gcc "${flags[@]}" $link -o "$native/sandboxd-keeper.tmp" "$native/keeper.c" 2>/dev/null; then
      break
    fi
  done
  [[ -x $native/sandboxd-keeper.tmp ]] || gcc "${flags[@]}" -o "$native/sandboxd-keeper.tmp" "$native/keeper.c"
  mv -f "$native/sandboxd-keeper.tmp" "$native/sandboxd-keeper"  # a running copy is never overwritten
fi

# The web console's front end (web/), built into the Python package (src/sandboxd/console/
# static, not committed) when it is missing or its source or lock file is newer. Reproducible
# from web/package-lock.json; needs Node.js >= 20.19 with npm (the npm registry at build time).
console=src/sandboxd/console/static
if [[ ! -f $console/index.html ]] \
   || [[ -n "$(find web/src web/index.html web/package.json web/package-lock.json web/vite.config.ts \
               web/tsconfig.json -newer "$console/index.html" 2>/dev/null | head -n 1)" ]]; then
  command -v npm >/dev/null || { echo "setup: the web console needs Node.js >= 20.19 and npm" >&2; exit 1; }
  echo "setup: building the web console (web/)" >&2
  (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
fi
