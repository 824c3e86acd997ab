#!/usr/bin/env bash
# End-to-end demo on this host (as root): install what is missing (CRIU
# included), start a private snapd daemon, start a process that keeps state in
# memory, checkpoint it, restore it, and show it alive with its state intact.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage() {
  cat <<EOF
Usage: scripts/demo.sh [--keep] [--help]

As root (a root shell, or sudo where it exists): install what is missing (CRIU, .venv),
start a private snapd daemon in a directory of this run's own, checkpoint a process that
keeps a counter and 64 MiB of random bytes in memory, restore it, and check its state.
  --keep       keep the work directory (store, daemon log) to look at (SNAPD_DEMO_KEEP=1)
  -h, --help   show this and do nothing
Environment: SNAPD_DEMO_DIR  the work directory, which must not exist yet
                             (default: a new /tmp/gpu-snapd-demo.XXXXXX)
EOF
}
keep=${SNAPD_DEMO_KEEP:-}
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --keep) keep=1 ;;
    *) usage >&2; echo "demo.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (CRIU needs it): from a root shell, or sudo $0" >&2; exit 1; }
if [ -n "${SNAPD_DEMO_DIR:-}" ]; then
  # never another run's directory (or anything else): it must be new
  [ ! -e "$SNAPD_DEMO_DIR" ] || { echo "demo.sh: SNAPD_DEMO_DIR=$SNAPD_DEMO_DIR exists; name a new directory" >&2; exit 1; }
  mkdir -p "$SNAPD_DEMO_DIR"
  work=$(cd "$SNAPD_DEMO_DIR" && pwd)
else
  work=$(mktemp -d /tmp/gpu-snapd-demo.XXXXXX)
fi
daemon_pid= ; demo_pid=
cleanup() {
  [ -n "$demo_pid" ] && kill -9 "$demo_pid" 2>/dev/null || true
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  # the work directory holds the demo's snapshot store; --keep (SNAPD_DEMO_KEEP=1) keeps it to look at
  [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
criu=$("$root/scripts/bootstrap.sh" | tail -n 1)
snapd="$root/.venv/bin/snapd"
export SNAPD_TARGET="unix://$work/snapd.sock"
# bold only on a terminal: no escape sequences in logs or pipes
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold= plain=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

step "starting snapd (criu: $criu), logs in $work/daemon.log (removed at the end unless --keep)"
"$snapd" serve --state-dir "$work/state" --socket "$work/snapd.sock" --criu "$criu" \
  --log-format json >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do "$snapd" list >/dev/null 2>&1 && break; sleep 0.1; done  # list: 0 once it answers
"$snapd" status || true

step "starting a demo process that keeps a counter and 64 MiB of random bytes in memory"
setsid "$root/.venv/bin/python" "$root/scripts/demo_counter.py" "$work/counter.log" </dev/null >/dev/null 2>&1 &
demo_pid=$!
disown "$demo_pid"
sleep 3
tail -n 2 "$work/counter.log"

step "snapd checkpoint $demo_pid"
"$snapd" checkpoint "$demo_pid" --name demo --label purpose=demo
before=$(tail -n 1 "$work/counter.log")
for _ in $(seq 100); do ps -p "$demo_pid" >/dev/null || break; sleep 0.1; done
echo "process $demo_pid is gone: $(ps -p "$demo_pid" >/dev/null && echo no || echo yes); last line it wrote:"
echo "  $before"
"$snapd" list

step "snapd restore demo"
"$snapd" restore demo
sleep 2
echo "process $demo_pid after restore: $(ps -o pid=,stat=,args= -p "$demo_pid")"
after=$(tail -n 1 "$work/counter.log")
echo "  before: $before"
echo "  after:  $after"
tick_before=${before#*tick=}; tick_before=${tick_before%% *}
tick_after=${after#*tick=}; tick_after=${tick_after%% *}
if [ "${before##* }" = "${after##* }" ] && [ "$tick_after" -gt "$tick_before" ]; then
  printf '\n%sOK:%s pid %s is alive again; its counter went on from %s to %s and its memory digest is unchanged.\n' \
    "$bold" "$plain" "$demo_pid" "$tick_before" "$tick_after"
else
  echo "FAILED: the restored process did not continue with its state" >&2
  exit 1
fi
