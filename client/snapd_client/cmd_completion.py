"""`snapd completion SHELL`: the shell completion script for bash, zsh or fish (click's)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from snapd_client.base import cli

SHELLS = ("bash", "zsh", "fish")
# the environment variable the script sets when it asks `snapd` for completions
COMPLETE_VAR = "_SNAPD_COMPLETE"


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL: commands, options and choices complete on Tab.

    \b
    Examples:
      snapd completion bash > /etc/bash_completion.d/snapd
      snapd completion zsh > "${fpath[1]}/_snapd"
      snapd completion fish > ~/.config/fish/completions/snapd.fish
      eval "$(snapd completion bash)"
    """
    cls = get_completion_class(shell)
    assert cls is not None  # click ships all of SHELLS
    click.echo(cls(ctx.find_root().command, {}, "snapd", COMPLETE_VAR).source())
