"""The daemon's commands of the `snapd` CLI: `serve` (run the daemon), `exit-codes`, and
`run` (start a server in namespaces of its own: server/run.py).

``main`` is the `snapd` entry point: the client's command group (snapd_client.cli)
with these added, so operators have one command and schedulers can use the
client package alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from snapd_client.base import EXIT_USAGE, json_option
from snapd_client.cli import cli
from snapd_client.errors import EXIT_DEADLINE, EXIT_UNREACHABLE
from snapd_daemon import logs
from snapd_daemon.errors import ALL_ERRORS, ConfigInvalid, DaemonNotRoot, SnapdError
from snapd_daemon.server import config
from snapd_daemon.server.run import run
from snapd_daemon.server.serve import serve as serve_daemon


@click.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TOML file of these options (keys: option names with _ for -, e.g. tls_client_ca); "
              "options given here win. The unit uses /etc/gpu-snapd/config.toml.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("/var/lib/gpu-snapd"), show_default=True)
@click.option("--socket", type=click.Path(path_type=Path), default=config.DEFAULT_SOCKET,
              show_default=True, help="The API's unix socket (owner root, mode 0660).")
@click.option("--socket-group", default="root", show_default=True, help="Group (name or gid) owning the socket.")
@click.option("--allow-uid", multiple=True, metavar="USER",
              help="Unix socket caller allowed besides root: user name or uid (repeatable).")
@click.option("--allow-gid", multiple=True, metavar="GROUP",
              help="Unix socket callers in this group (primary or supplementary; name or gid) are allowed "
              "(repeatable).")
@click.option("--tcp", default="", help="Also listen on host:port: mutual TLS (--tls-*) or --insecure-loopback-tcp.")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM certificate chain of the TCP port.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM private key of the TCP port.")
@click.option("--tls-client-ca", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM CA that signs client certificates; clients without one are refused.")
@click.option("--insecure-loopback-tcp", is_flag=True,
              help="Serve --tcp as plain TCP (loopback addresses only; any local user can then use the API).")
@click.option("--cgroup-root", type=click.Path(path_type=Path), default=None,
              help="Delegated cgroup v2 subtree restores may be placed in [default: <cgroup2 mount>/gpu-snapd].")
@click.option("--metrics-address", default="", help="Serve Prometheus /metrics on host:port (off by default).")
@click.option("--criu", default=None, help="CRIU binary (default: /opt/gpu-snapd/criu/bin/criu, then PATH).")
@click.option("--criu-log-level", type=click.IntRange(0, 4), default=4, show_default=True)
@click.option("--scratch", type=click.Choice(["auto", "ram", "disk"]), default="auto", show_default=True,
              help="Where CRIU images are staged: RAM (/dev/shm) when it has room, or always RAM / disk.")
@click.option("--io-threads", type=click.IntRange(1, 256), default=None,
              help="Threads hashing/compressing chunks (default: CPU count, at most 16).")
@click.option("--inject-min-mb", type=click.IntRange(0), default=2, show_default=True,
              help="Restore private anonymous regions of at least this size by parallel memory writes (0: off).")
@click.option("--inject-huge-pages/--no-inject-huge-pages", default=False, show_default=True,
              help="Mark the regions snapd writes MADV_HUGEPAGE, so restores fill them in huge pages.")
@click.option("--restore-overlap", type=click.Choice(["gpu", "always", "never"]), default="never", show_default=True,
              help="Fill restored memory while the tree runs (CRIU lazy pages), so the CUDA restore overlaps the "
              "fill: for GPU snapshots, every snapshot, or never (docs/restore-speed.md; not yet benchmarked on a GPU).")
@click.option("--inject-method", type=click.Choice(["writev", "uffd"]), default="writev", show_default=True,
              help="How a restore writes memory into the stopped tree: process_vm_writev, or UFFDIO_COPY through "
              "CRIU's lazy pages, ended before the tree resumes (cheaper per byte; docs/restore-speed.md; not yet "
              "benchmarked on a GPU).")
@click.option("--slow-phase-seconds", type=click.FloatRange(0), default=30.0, show_default=True, metavar="SECONDS",
              help="A restore step blocked this long (the CUDA restore, a post-copy fill) logs the kernel stacks of "
              "the tree's threads, and again every as long; 0: never.")
@click.option("--store-raw-below", type=click.FloatRange(0, 100), default=5.0, show_default=True, metavar="PERCENT",
              help="Store a chunk raw when compressing it saves less than this percentage of its size: restores "
              "then copy it instead of decoding it (docs/restore-speed.md).")
@click.option("--warm-files-mb", type=click.IntRange(0), default=1024, show_default=True,
              help="Record up to this much of the file pages (libraries) a tree had mapped in at checkpoint, and read "
              "them ahead at restore and prefetch (0: off).")
@click.option("--restore-log-dir", type=click.Path(path_type=Path), default=None,
              help="Where restored trees' stdout/stderr pipes go when their reader is gone [default: STATE_DIR/logs].")
@click.option("--gpu-policy", type=click.Choice(["shared", "exclusive"]), default="shared", show_default=True,
              help="Where restores put GPU snapshots unless they say: a GPU of the model with room for what the "
              "snapshot held there plus --gpu-margin (shared), or only an idle one (exclusive).")
@click.option("--gpu-margin", default="1G", show_default=True, metavar="SIZE|PCT",
              help="Room a shared GPU keeps beyond a snapshot's recorded use: bytes (1073741824, 512M, 1G) or a "
              "percentage of the GPU's memory (5%).")
@click.option("--keep-exited-instances", type=click.IntRange(0), default=100, show_default=True,
              help="Records of ended (exited, stopped) instances kept for `snapd ps -a`: at most this many, the newest.")
@click.option("--exited-instance-max-hours", type=click.FloatRange(0), default=24.0, show_default=True,
              help="...and none that ended longer ago than this.")
@click.option("--remote-endpoint", default="", metavar="URL",
              help="S3-compatible endpoint of the remote tier, e.g. https://s3.us-east-1.amazonaws.com (with "
              "--remote-bucket; off when empty).")
@click.option("--remote-bucket", default="", help="Bucket of the remote tier.")
@click.option("--remote-prefix", default="", help="Key prefix in the bucket (several fleets can share one bucket).")
@click.option("--remote-region", default="us-east-1", show_default=True)
@click.option("--remote-credentials-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="AWS shared-credentials (INI) file with the keys [default: AWS_* environment, web identity, "
              "instance metadata, then ~/.aws/credentials].")
@click.option("--remote-profile", default="", help="Profile of the credentials file [default: AWS_PROFILE, default].")
@click.option("--remote-ca-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM CA bundle for the endpoint's TLS certificate [default: the system's].")
@click.option("--remote-threads", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Parallel transfers of one push or pull.")
@click.option("--remote-retries", type=click.IntRange(0, 100), default=5, show_default=True,
              help="Retries of a failed request, with exponential backoff.")
@click.option("--remote-timeout", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Seconds one request may take.")
@click.option("--remote-encryption-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Fleet key file (32 random bytes, mode 0600) the remote tier's objects are encrypted with; "
              "hosts sharing it share chunks (docs/remote-encryption.md).")
@click.option("--remote-read-key", type=click.Path(path_type=Path, dir_okay=False), multiple=True,
              help="Older fleet key file objects are still read with, after a key rotation (repeatable).")
@click.option("--remote-allow-plaintext", is_flag=True,
              help="Allow unencrypted objects: written when no --remote-encryption-key is given, read from a bucket "
              "written before encryption.")
@click.option("--gpu-required/--no-gpu-required", default=False, show_default=True,
              help="This host has an NVIDIA GPU: `snapd status` fails (exit 1) when no driver is reachable, "
              "instead of warning.")
@click.option("--push-after-checkpoint/--no-push-after-checkpoint", default=False, show_default=True,
              help="Upload every snapshot to the remote tier once durable (checkpoint --push/--no-push wins).")
@click.option("--signing-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM Ed25519 private key push and export sign manifests with (docs/integrity.md); its public "
              "key is trusted too.")
@click.option("--trusted-key", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM Ed25519 public key whose signatures pull, on-demand restore and import accept "
              "(repeatable; config key trusted_key, a list).")
@click.option("--require-signed/--no-require-signed", default=False, show_default=True,
              help="Refuse pulled, restored-from-remote and imported snapshots no trusted key signed.")
@click.option("--drain-timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for running operations on SIGTERM.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
@click.option("--check-config", is_flag=True,
              help="Only check the options and config file (as `nginx -t`): exit 0 if the daemon would accept "
                   "them and the remote endpoint (if any) accepts a connection within 3 s, 43 (ConfigInvalid) "
                   "naming the bad key otherwise.")
@click.pass_context
def serve(ctx: click.Context, config_file: Path | None, check_config: bool, **options: Any) -> None:
    """Run the daemon (as root) until SIGTERM.

    \b
    Examples:
      snapd serve --config /etc/gpu-snapd/config.toml
      snapd serve --config /etc/gpu-snapd/config.toml --check-config
      snapd serve --state-dir /tmp/snapd --socket /tmp/snapd.sock --log-format console
    """
    try:
        if config_file:
            options.update(_file_options(ctx, config_file, options))
        settings, listen = config.build(options)
        if check_config:
            if listen.tcp:
                listen.tcp.check()
            if settings.remote:
                config.check_reachable(settings.remote)
            click.echo(f"snapd serve: configuration OK{f' ({config_file})' if config_file else ''}: state dir "
                       f"{settings.state_dir}, socket {listen.socket_path}")
            return
        if os.geteuid() != 0:
            raise DaemonNotRoot(uid=os.geteuid())
        log_format = options["log_format"]
        logs.configure(options["log_level"], None if log_format == "auto" else log_format == "json")
        serve_daemon(settings, listen)
    except SnapdError as err:
        click.echo(f"snapd serve: error: {err.message}", err=True)
        sys.exit(err.exit_code)


def _file_options(ctx: click.Context, path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The config file's values for the options not given on the command line (or environment),
    converted and checked like command-line values."""
    params = {p.name: p for p in ctx.command.params if p.name in options}
    taken = {}
    for name, value in config.load(path, params).items():
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            try:
                taken[name] = params[name].type_cast_value(ctx, value)
            except click.BadParameter as exc:
                raise ConfigInvalid(source=f"{path}: {name}", reason=exc.message) from exc
    return taken


@click.command("exit-codes")
@json_option
@click.pass_context
def exit_codes(ctx: click.Context) -> None:
    """List the exit codes of this CLI.

    \b
    Examples:
      snapd exit-codes
      snapd exit-codes --json
    """
    codes = [{"exit_code": 0, "error": "", "meaning": "success"},
             {"exit_code": EXIT_USAGE, "error": "UsageError", "meaning": "usage error"},
             {"exit_code": EXIT_UNREACHABLE, "error": "Unreachable", "meaning": "daemon unreachable"},
             {"exit_code": EXIT_DEADLINE, "error": "DeadlineExceeded",
              "meaning": "a call's deadline passed (the client's timeout) before the daemon answered"}]
    codes += [{"exit_code": cls.exit_code, "error": cls.__name__, "status": cls.status,
               "meaning": "unexpected internal error (see the daemon log)" if cls is SnapdError
               else (cls.__doc__ or "").strip().splitlines()[0]}
              for cls in ALL_ERRORS]
    codes.sort(key=lambda c: int(c["exit_code"]))  # type: ignore[call-overload]
    if ctx.find_root().obj["json"]:
        click.echo(json.dumps({"exit_codes": codes}, indent=2))
        return
    for code in codes:
        named = code["error"] and code["exit_code"] not in (EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DEADLINE)
        click.echo(f"{code['exit_code']:<3} " + (f"{code['error']}: " if named else "") + str(code["meaning"]))


def main() -> None:
    cli.add_command(serve)
    cli.add_command(exit_codes)
    cli.add_command(run)
    cli()
