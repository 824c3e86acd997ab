#!/usr/bin/env bash
# What a change to checkpoint, restore, host or runtime code must pass on a GPU host, in steps
# that each fit one device call (10 minutes), keeping what would explain a hang while it happens.
#
#   scripts/bench/gpu-check.sh STEP OUT [ARG...]
#
# STEP
#   tests      tests/test_gpu.py whole, 3 tests at once when pytest-xdist is installed, those marked
#              gpu_alone after them alone (then tests/test_gpu_replicas.py when 2 GPUs are visible)
#   postcopy   the post-copy GPU test alone, its output not captured (-s)
#   bench      scripts/bench/gpu.py --settle 0 --keep-weights (8B); then the hot restore again
#              with inject_method uffd and with restore_overlap gpu (post-copy; each with a
#              deadline, a failed one recorded), and last the server checkpointed into a fresh
#              store with store_raw_below 35 and restored hot from it
#   bench-kv   scripts/bench/gpu.py --settle 0 --kv-cache-fraction 0.8 --sleep-hooks (removes
#              the weights: the disk cannot hold them and a KV-heavy stock image)
# OUT receives STEP.txt (the step's output), STEP-logs.txt (the daemons' logs of the tests that failed:
# pytest keeps no other test's directory), and STEP-watch.txt:
# every 20 s while the step runs, the kernel stacks of every thread waiting uninterruptibly (D)
# or on a userfaultfd, `py-spy dump` of each snapd daemon (when py-spy is installed) and the
# kernel log's tail. The bench's daemon logs `slow_phase` (the restored tree's stacks) after 10 s,
# the post-copy test's too.
# ARGs go to the step's pytest or gpu.py (e.g. --hot-only, or -k EXPR).
# Environment: PYTHON (default python3) able to import snapd (PYTHONPATH), SNAPD_CRIU;
# GPU_CHECK_LIMIT: the step's limit in seconds, instead of its own.
# Exit status: the step's (124, or 137 when it had to be killed: it ran past its limit).
set -uo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
step=$1
out=$(realpath -m "$2")
extra=("${@:3}")  # to the step's pytest or gpu.py
py=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
temp=/tmp/gpu-check-$step
rm -rf "$temp"; mkdir -p "$temp"

watch() {  # what each waiting thread waits on, every 20 s, until killed
    while sleep 20; do
        echo "=== $(date -u +%T)"
        for task in /proc/[0-9]*/task/[0-9]*; do
            wchan=$(cat "$task/wchan" 2>/dev/null) || continue
            stat=$(cat "$task/stat" 2>/dev/null) || continue
            state=${stat##*) }  # after the command name, which may hold spaces and parentheses
            state=${state%% *}
            if [ "$state" = D ] || [[ $wchan == *userfault* ]]; then
                echo "--- $task $(cat "$task/comm" 2>/dev/null) $state $wchan"
                cat "$task/stack" 2>/dev/null
            fi
        done
        if command -v py-spy >/dev/null; then
            for pid in $(pgrep -f 'snapd_daemon serve|snapd serve'); do
                echo "--- py-spy dump $pid"
                timeout 15 py-spy dump --pid "$pid" 2>&1
            done
        fi
        dmesg 2>/dev/null | tail -n 20
    done
}

pytest_args=(-p no:cacheprovider -v -rs --durations=0 "${extra[@]}")  # a line per test as it ends: a step cut off still says which passed
case $step in
    tests)  # each run its own basetemp: pytest empties it at start. With pytest-xdist, 3 workers
            # share the GPU (each test its own servers and daemon), then the gpu_alone tests run alone
        run=(bash -c 'temp=$1; shift
                      workers=(); "$0" -c "import xdist" 2>/dev/null && workers=(-n 3)
                      passed() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }  # 5: none selected (-k chose the other run'"'"'s)
                      "$0" -m pytest "$@" "${workers[@]}" -m "not gpu_alone" --basetemp "$temp/gpu" tests/test_gpu.py
                      status=$?
                      "$0" -m pytest "$@" -m gpu_alone --basetemp "$temp/alone" tests/test_gpu.py
                      alone=$?
                      passed "$alone" || exit "$alone"
                      passed "$status" || exit "$status"
                      [ "$status$alone" != 55 ] || exit 5  # neither selected a test
                      [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -lt 2 ] ||
                      "$0" -m pytest "$@" --basetemp "$temp/replicas" tests/test_gpu_replicas.py'
             "$py" "$temp" "${pytest_args[@]}")
        limit=570 ;;
    postcopy)
        run=("$py" -m pytest "${pytest_args[@]}" --basetemp "$temp" -s tests/test_gpu.py -k post_copy)
        limit=300 ;;
    bench)
        run=("$py" scripts/bench/gpu.py --settle 0 --keep-weights --json "$out/bench.json"
             --compare=--inject-method=uffd --compare=--restore-overlap=gpu --also-store-raw-below 35
             --daemon-log "$out/bench-daemon.log" --serve-option=--slow-phase-seconds=10 "${extra[@]}")
        limit=570 ;;
    bench-kv)
        run=("$py" scripts/bench/gpu.py --settle 0 --kv-cache-fraction 0.8 --sleep-hooks --json "$out/bench-kv.json"
             --daemon-log "$out/bench-kv-daemon.log" --serve-option=--slow-phase-seconds=10 "${extra[@]}")
        limit=570 ;;
    *)
        echo "gpu-check.sh: unknown step '$step' (tests, postcopy, bench, bench-kv)" >&2
        exit 2 ;;
esac
limit=${GPU_CHECK_LIMIT:-$limit}

watch >"$out/$step-watch.txt" 2>&1 &
watcher=$!
timeout -k 15 "$limit" "${run[@]}" >"$out/$step.txt" 2>&1
status=$?
pkill -P "$watcher" 2>/dev/null; kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
if [ "$status" -ge 124 ]; then  # killed at its limit: the test daemons (own sessions) and their trees too
    pkill -KILL -f -- "--state-dir $temp" 2>/dev/null
    pkill -KILL -f -- "snapd-gpu-bench-" 2>/dev/null
fi
if [ -d "$temp" ]; then  # the daemons' logs only (the snapshots beside them are gigabytes), in one
    # file: a device call brings back few files, and none deeper than two folders
    (cd "$temp" && find . -name '*.log' -size -50M | sort | while read -r log; do
        echo "===== $log"; tail -c 4M "$log"; done) >"$out/$step-logs.txt"
fi
tail -n 40 "$out/$step.txt"
echo "gpu-check.sh: step $step exit $status (limit $limit s); output in $out"
exit "$status"
