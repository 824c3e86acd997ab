"""What every `snapd` command shares: the group, the per-command options, JSON or text output,
failures as exit codes.

Every command that talks to the daemon takes ``@common_options``: ``--json`` and ``--target``
work before the command name (group options) and after it. With ``--json`` anywhere on the
command line, usage errors are a JSON object on stderr too (exit 2). Commands register
themselves on ``cli`` (``@cli.command()``) in their own modules; cli.py imports them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from google.protobuf.message import Message

from snapd_client.client import DEFAULT_TARGET, SnapdClient, SnapdClientError, TlsFiles, normalize_target
from snapd_client.output import as_dict
from snapd_client.version import version

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Ctx:
    """What a command's action needs: where the daemon is, how to print."""

    def __init__(self, target: str, as_json: bool, tls: TlsFiles | None) -> None:
        self.target = target
        self.as_json = as_json
        self.tls = tls

    def client(self) -> SnapdClient:
        return SnapdClient(self.target, tls=self.tls)

    def emit(self, msg: Message | dict[str, Any], human: Callable[[], None]) -> None:
        """``msg`` as JSON on stdout (64-bit integers as numbers), or ``human()``."""
        if self.as_json:
            click.echo(json.dumps(as_dict(msg) if isinstance(msg, Message) else msg, indent=2, sort_keys=True))
        else:
            human()

    def fail(self, error: str, message: str, exit_code: int) -> NoReturn:
        """Say why on stderr (a JSON object with --json) and exit with ``exit_code``."""
        if self.as_json:
            click.echo(json.dumps({"error": error, "message": message, "exit_code": exit_code}), err=True)
        else:
            click.echo(f"snapd: {'cancelled' if error == 'Cancelled' else 'error'}: {message}", err=True)
        sys.exit(exit_code)


def context(ctx: click.Context) -> Ctx:
    obj = ctx.find_root().obj
    return Ctx(obj["target"], obj["json"], obj["tls"])


def run(ctx: click.Context, action: Callable[[Ctx], None]) -> None:
    """Run ``action``; a failed call exits with its error's code, Ctrl-C with 130."""
    c = context(ctx)
    try:
        action(c)
    except SnapdClientError as err:
        c.fail(err.error_class or err.code.name, err.message, err.exit_code)
    except KeyboardInterrupt:
        click.echo("snapd: interrupted; the call was cancelled (an operation the daemon had started rolls back "
                   "unless it was past its commit point)", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().obj["json"] = True


def _set_target(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.find_root().obj["target"] = normalize_target(value)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` after the command name (same as before it)."""
    return click.option("--json", is_flag=True, expose_value=False, callback=_set_json,
                        help="Print JSON (same as `snapd --json COMMAND`).")(f)


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` and ``--target`` after the command name (same as before it)."""
    f = click.option("--target", metavar="ADDRESS", expose_value=False, callback=_set_target,
                     help="Daemon address (same as `snapd --target ADDRESS COMMAND`).")(f)
    return json_option(f)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"snapd {version()}")
        ctx.exit()


class SnapdGroup(click.Group):
    """A click group whose usage errors are JSON when --json is on the command line."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(argv, prog_name or "snapd", complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if "--json" in argv:
                click.echo(json.dumps({"error": "UsageError", "message": exc.format_message(),
                                       "exit_code": exc.exit_code}), err=True)
            else:
                exc.show()
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("snapd: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=SnapdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, envvar="SNAPD_TARGET", show_envvar=True,
              metavar="ADDRESS", help="Daemon address: a socket path, unix:///path.sock, or HOST:PORT (TCP).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: results on stdout, errors on stderr (any command).")
@click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False), envvar="SNAPD_TLS_CA", show_envvar=True,
              help="Mutual TLS to a TCP target: CA of the daemon's certificate (with --tls-cert, --tls-key).")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), envvar="SNAPD_TLS_CERT",
              show_envvar=True, help="This client's PEM certificate.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), envvar="SNAPD_TLS_KEY",
              show_envvar=True, help="This client's PEM private key.")
@click.pass_context
def cli(ctx: click.Context, target: str, as_json: bool, tls_ca: Path | None, tls_cert: Path | None,
        tls_key: Path | None) -> None:
    """snapd: checkpoint warmed (GPU) processes and restore them in seconds.

    Snapshots are named by id, by any unique prefix of an id, or by name (its newest
    snapshot). `snapd COMMAND --help` shows each command's options and examples;
    `snapd exit-codes` lists the exit codes.

    \b
    Examples:
      snapd checkpoint 4242 --name llama-8b
      snapd restore llama-8b --cgroup inference/llama --create-cgroup --memory-max 64G
      snapd --target /run/gpu-snapd/snapd.sock list --json
    """
    given = [f for f in (tls_ca, tls_cert, tls_key) if f]
    if given and len(given) != 3:
        raise click.UsageError("--tls-ca, --tls-cert and --tls-key go together")
    tls = TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key) if tls_ca and tls_cert and tls_key else None
    ctx.obj = {"target": normalize_target(target), "json": as_json, "tls": tls}
