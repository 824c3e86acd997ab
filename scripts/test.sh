#!/usr/bin/env bash
# Run the test suite against real CRIU (as root). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  -h|--help)
    cat <<EOF
Usage: scripts/test.sh [PYTEST ARGS...]

Run the test suite as root against real CRIU: scripts/bootstrap.sh first (CRIU, .venv),
then pytest with PYTEST ARGS (options pytest does not know: exit 2, as a usage error), e.g.
  scripts/test.sh tests/test_cli.py -k status -x
Two test files run at a time, each in a pytest-xdist worker of its own (a file's tests
in one worker, in order; the files that change the host's mounts and those whose restores
need them unchanged one after another: tests/conftest.py); SNAPD_TEST_WORKERS=N runs N at
a time, 0 all in this process.
GPU tests run where an NVIDIA GPU with driver >= 570 is present, and skip elsewhere.
EOF
    exit 0 ;;
esac
workers=${SNAPD_TEST_WORKERS:-2}
case $workers in ''|*[!0-9]*) echo "test.sh: SNAPD_TEST_WORKERS must be a number, not '$workers'" >&2; exit 2 ;; esac
parallel=()
[ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadfile)  # the host-mount files as one (tests/conftest.py)
export SNAPD_CRIU=$("$root/scripts/bootstrap.sh" | tail -n 1)
cd "$root"
status=0
.venv/bin/python -m pytest -ra "${parallel[@]}" "$@" || status=$?
# pytest's usage error is 4; this script's, like the others', is 2
[ "$status" != 4 ] || exit 2
exit "$status"
