"""The `snapd` entry point: `snapd --version` is answered without importing the daemon, gRPC
or the commands (snapd_client/version.py); everything else runs server/cli.py's group."""

from __future__ import annotations

from snapd_client.version import answer_version


def main() -> None:
    if answer_version():
        return
    from snapd_daemon.server.cli import main as run_cli

    run_cli()
