"""Ctrl-C during a `snapd checkpoint` or `snapd restore`.

The first Ctrl-C asks the daemon to cancel the operation (its id comes with
every progress event; a Ctrl-C before the first one waits for it) and the
stream is followed on to its end: rolled back
(the call ends with Cancelled: "snapd: cancelled: ...", exit 45) or past its
commit point and completed (the result, exit 0, and a line saying so). A
second Ctrl-C, also while the cancel is being asked for, leaves at once
(exit 130); the daemon then decides, as for any call whose client is gone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

import click

from snapd_client.client import SnapdClient


class Interrupts:
    """The on_interrupt of a checkpoint or restore; ``clear`` wipes the progress line for good
    (ProgressLine.stop: nothing redraws it under the messages that follow)."""

    def __init__(self, client: SnapdClient, clear: Callable[[], None]) -> None:
        self.client = client
        self.clear = clear
        self.operation_id = ""

    def __call__(self, operation_id: str) -> None:
        self.clear()
        if self.operation_id:
            self._leave()
        self.operation_id = operation_id
        click.echo(f"snapd: cancelling operation {operation_id} (Ctrl-C again to stop waiting)", err=True)
        try:
            answer = self.client.cancel(operation_id)
        except KeyboardInterrupt:
            self._leave()
        click.echo(f"snapd: {answer.detail}", err=True)

    def _leave(self) -> NoReturn:
        click.echo(f"snapd: not waiting for operation {self.operation_id}; the daemon decides whether it rolls "
                   "back or completes (`snapd list` shows a completed checkpoint)", err=True)
        sys.exit(130)

    def completed(self) -> None:
        """Say so when the operation completed although Ctrl-C asked it to cancel."""
        if self.operation_id:
            click.echo(f"snapd: operation {self.operation_id} had passed its commit point when it was cancelled; "
                       "it completed", err=True)
