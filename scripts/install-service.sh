#!/usr/bin/env bash
# Install gpu-snapd as a systemd service from this checkout (as root). Idempotent:
#   /opt/gpu-snapd/criu/bin/criu   CRIU >= 4.0 (scripts/install-criu.sh: found or built)
#   /opt/gpu-snapd/venv            snapd and its dependencies (pip, from this checkout)
#   group gpu-snapd                the API socket's group
#   /etc/gpu-snapd/config.toml     from deploy/config.toml (+ the CRIU path), only when there is none yet
#   /etc/systemd/system/gpu-snapd.service, enabled and (re)started; restored trees
#                                  survive the restart (KillMode=process)
# The configuration is checked (`snapd serve --check-config`) before the service is
# (re)started: a bad config.toml stops the install, naming the key, and leaves a
# running daemon alone.
#   scripts/install-service.sh --uninstall   stops, disables and removes the unit and
#                                  /opt/gpu-snapd/venv; keeps /etc/gpu-snapd, the
#                                  snapshots in /var/lib/gpu-snapd, the group and
#                                  CRIU (docs/operating.md, "Uninstall", says how to remove them)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'install-service: %s\n' "$*" >&2; }
usage() {
  cat <<EOF
Usage: scripts/install-service.sh [--uninstall] [--help]

Install gpu-snapd from this checkout as the systemd service gpu-snapd.service, as root
(idempotent): CRIU in /opt/gpu-snapd/criu, snapd in /opt/gpu-snapd/venv, the group
gpu-snapd, /etc/gpu-snapd/config.toml (kept when present; checked before the restart).
  --uninstall   remove the unit and /opt/gpu-snapd/venv; keep the configuration, the
                snapshots, the group and CRIU (restored servers keep running)
  -h, --help    show this and change nothing
EOF
}
uninstall=
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --uninstall) uninstall=1 ;;
  "") ;;
  *) usage >&2; say "unknown argument: $1"; exit 2 ;;
esac
[ $# -le 1 ] || { usage >&2; say "one argument at most"; exit 2; }

[ "$(id -u)" = 0 ] || { say "run as root: from a root shell, or sudo $0"; exit 1; }

if [ -n "$uninstall" ]; then
  if [ -d /run/systemd/system ] && systemctl list-unit-files gpu-snapd.service >/dev/null 2>&1; then
    systemctl disable --now gpu-snapd.service || true
  fi
  rm -f /etc/systemd/system/gpu-snapd.service
  [ -d /run/systemd/system ] && systemctl daemon-reload
  rm -rf /opt/gpu-snapd/venv
  say "removed the unit and /opt/gpu-snapd/venv; restored servers keep running; kept /etc/gpu-snapd, /var/lib/gpu-snapd (snapshots), /var/log/gpu-snapd, the group gpu-snapd and /opt/gpu-snapd/criu"
  exit 0
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { say "$python is $("$python" -V 2>&1); snapd needs Python >= 3.11 (set PYTHON=)"; exit 1; }

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  say "installing python3-venv"
  apt-get install -y -q python3-venv >&2 || { apt-get update -q >&2 && apt-get install -y -q python3-venv >&2; }
fi

criu=$("$root/scripts/install-criu.sh" | tail -n 1)
[ -x /opt/gpu-snapd/venv/bin/python ] || "$python" -m venv /opt/gpu-snapd/venv
/opt/gpu-snapd/venv/bin/python -m pip install -q --upgrade "$root/client" "$root" >&2
getent group gpu-snapd >/dev/null || groupadd --system gpu-snapd
install -d -m 0755 /etc/gpu-snapd
if [ ! -e /etc/gpu-snapd/config.toml ]; then
  install -m 0644 "$root/deploy/config.toml" /etc/gpu-snapd/config.toml
  printf '\n# the CRIU scripts/install-criu.sh picked\ncriu = "%s"\n' "$criu" >> /etc/gpu-snapd/config.toml
fi
/opt/gpu-snapd/venv/bin/snapd serve --config /etc/gpu-snapd/config.toml --check-config >&2 ||
  { say "fix /etc/gpu-snapd/config.toml (the line above names the key), then run this again"; exit 1; }
install -m 0644 "$root/deploy/systemd/gpu-snapd.service" /etc/systemd/system/gpu-snapd.service

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable gpu-snapd.service
  systemctl restart gpu-snapd.service
  say "gpu-snapd.service is $(systemctl is-active gpu-snapd.service); socket /run/gpu-snapd/snapd.sock"
else
  say "installed; systemd is not running here, start it with: /opt/gpu-snapd/venv/bin/snapd serve --config /etc/gpu-snapd/config.toml"
fi
