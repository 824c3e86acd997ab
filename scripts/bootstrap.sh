#!/usr/bin/env bash
# Make this checkout runnable: CRIU (found or built), a virtualenv in .venv with
# snapd and its test dependencies. Idempotent; fast when already done.
# Run as root. Prints the CRIU path as the last line of stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'bootstrap: %s\n' "$*" >&2; }
usage() {
  cat <<EOF
Usage: scripts/bootstrap.sh [--help]

Make this checkout runnable, as root: CRIU (scripts/install-criu.sh: found or built into
/opt/gpu-snapd/criu), the apt packages the tests use, and .venv with the client
(client/), the daemon and the test dependencies. Idempotent. The last line of stdout is
the CRIU path. Environment: PYTHON (default python3, >= 3.11).
EOF
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; say "unknown argument: $1"; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { say "run as root (CRIU needs it): from a root shell, or sudo $0"; exit 1; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { say "no $python on PATH; install Python >= 3.11"; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { say "$python is $("$python" -V 2>&1); snapd needs Python >= 3.11"; exit 1; }
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  say "installing python3-venv"
  apt-get install -y -q python3-venv >&2 || { apt-get update -q >&2 && apt-get install -y -q python3-venv >&2; }
fi

# Tests verify the systemd unit (systemd-analyze) and make TLS certificates (openssl); CRIU
# saves and restores a network namespace's addresses and routes with iproute2's `ip`
# (`snapd run --netns` snapshots).
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v openssl >/dev/null || missing+=(openssl)
command -v ip >/dev/null || missing+=(iproute2)
# The image test (tests/test_image.py) builds and runs snapd's OCI image: podman, runc (crun
# refuses hybrid cgroup hosts) and debootstrap (the bases are made from Debian's packages).
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# The pod test (tests/test_pods.py): podman builds its pod infra image from catatonit (no
# registry), and its bridge network (netavark) needs iptables.
command -v catatonit >/dev/null || missing+=(catatonit)
command -v iptables >/dev/null || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (systemd-analyze, openssl for the tests; ip for CRIU's network namespaces;" \
    "podman, runc, debootstrap for the image test; catatonit, iptables for the pod test)"
  apt-get install -y -q "${missing[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; } ||
    { say "FAILED to install ${missing[*]} with apt-get"; exit 1; }
fi

criu=$("$root/scripts/install-criu.sh" | tail -n 1)

stamp=.venv/.snapd-installed
want=$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating .venv and installing snapd"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >&2
  # the daemon's package depends on the client's (client/pyproject.toml): both from this checkout
  .venv/bin/python -m pip install -q -e ./client -e '.[test]' >&2
  echo "$want" > "$stamp"
fi
echo "$criu"
