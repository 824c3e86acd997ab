"""The init (pid 1) of a pid namespace that `snapd run` starts: ``python -m snapd_daemon.host.nsinit CMD ARGS``.

It runs CMD as its only child, passes on the signals a supervisor sends
(SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2: a pid 1 would otherwise
ignore those it has no handler for), reaps every orphan of the namespace, and
exits with CMD's status (128 + N for signal N) once CMD has exited, which ends
the namespace. It holds nothing CRIU cannot dump (no sockets, no files but
its stdio) and imports nothing beyond the standard library, so it adds a few
MiB to a snapshot. It is dumped and restored with the tree: each restored copy
has its own.
"""

from __future__ import annotations

import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m snapd_daemon.host.nsinit CMD [ARGS...]", file=sys.stderr)
        return 2
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"snapd run: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
            os._exit(127)

    forward_signals(child)
    while True:
        pid, status = os.wait()
        if pid == child:
            return exit_code(status)


def forward_signals(pid: int) -> None:
    """Pass each FORWARDED signal this process gets on to ``pid`` (gone already: ignored)."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)


def exit_code(status: int) -> int:
    """A shell's exit code for a wait status: the code, or 128 + N for signal N."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
