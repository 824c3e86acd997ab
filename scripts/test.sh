#!/usr/bin/env bash
# Run the test suite against real CRIU (as root). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export SNAPD_CRIU=$("$root/scripts/bootstrap.sh" | tail -n 1)
cd "$root"
exec .venv/bin/python -m pytest -ra "$@"
