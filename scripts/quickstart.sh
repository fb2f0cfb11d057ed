#!/usr/bin/env bash
# Set up (if needed), start `sandboxd up` with its embedded defaults, run a real example
# against it, and keep the platform running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

log=$(mktemp -t sandboxd-up.XXXXXX)
.venv/bin/sandboxd up "$@" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT INT TERM

for _ in $(seq 1 1200); do  # the first start builds python:3.11
  if line=$(grep -m1 '^CWSANDBOX_BASE_URL=' "$log"); then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; exit 1; fi
  sleep 0.5
done
[[ -n "${line:-}" ]] || { echo "sandboxd did not become ready" >&2; cat "$log" >&2; exit 1; }
# `sandboxd up` prints the administrator key before the ready line; calls need it.
key=$(grep -m1 '^CWSANDBOX_API_KEY=' "$log")
export "${line?}" "${key?}"
echo "sandboxd is up: $line"
echo "administrator key: ${key#CWSANDBOX_API_KEY=} (also in the data directory, file admin-key)"

echo "--- examples/list_runners.py"
.venv/bin/python examples/list_runners.py
echo "--- examples/list_profiles.py"
.venv/bin/python examples/list_profiles.py
echo "--- examples/sandbox_network_options.py (a real sandbox)"
.venv/bin/python examples/sandbox_network_options.py

echo "sandboxd keeps running (pid $pid). In other shells:"
echo "  export $line"
echo "  export $key"
echo "Ctrl-C stops it."
wait "$pid"
