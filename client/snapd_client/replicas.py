"""`snapd restore SNAPSHOT --replicas K`: K restores of one snapshot at once, one call each
(``SnapdClient.restore_replicas``), and how the CLI reports them.

Only a replicable snapshot (taken of a tree started with `snapd run`: its own
pid namespace) can be restored more than once at a time; any other's second
copy is refused (its pids are in use). Each replica is all or nothing on its
own: a replica that fails is rolled back by the daemon, those that succeeded
stay running (the caller asked for K servers; K-1 healthy ones are kept, and
the failure is reported with its exit code).

With --json, stdout holds {"replicas": [RestoreResult of each running copy, in order of
start], "errors": [{"error", "message", "exit_code"} of each failed one]} (docs/scheduler.md).
"""

from __future__ import annotations

import json
import sys

import click

from snapd.v1 import snapd_pb2 as pb
from snapd_client.client import SnapdClientError
from snapd_client.output import as_dict


def namespaces_note(snap: pb.Snapshot) -> str:
    """What `snapd inspect` adds about a snapshot's namespaces ("" for a plain one)."""
    if not snap.replicable:
        return ""
    ports = f", own network namespace (ports {list(snap.namespace_ports)})" if snap.own_network_namespace else ""
    return f"; replicable (own pid namespace{ports})"


def failure_summary(failed: int, total: int) -> str:
    """What the failures leave: none running, or how many still are."""
    if failed == total:
        return f"all {total} replicas failed; none is running"
    return f"{failed} of {total} replicas failed (rolled back); the other {total - failed} are running"


def report(outcomes: list[pb.RestoreResult | SnapdClientError], as_json: bool) -> None:
    """Print every replica (running or failed); exit with the first failure's code, if any."""
    failed = [o for o in outcomes if isinstance(o, SnapdClientError)]
    if as_json:
        click.echo(json.dumps({"replicas": [as_dict(o) for o in outcomes if isinstance(o, pb.RestoreResult)],
                               "errors": [{"error": e.error_class, "message": e.message, "exit_code": e.exit_code}
                                          for e in failed]}, indent=2, sort_keys=True))
    for i, o in enumerate(outcomes):
        if isinstance(o, SnapdClientError):
            click.echo(f"replica {i}: failed (rolled back): {o.message}", err=True)
        elif not as_json:
            ports = ", ".join(f"{p.port} at {p.address}" for p in o.published)
            gpus = ", ".join(f"{old} -> {new}" for old, new in sorted(o.gpus.items()))
            click.echo(f"replica {i}: instance {o.instance_id}, pid {o.root_pid} (pids {list(o.pids)}) in "
                       f"{o.duration_seconds:.2f} s"
                       + (f", ready in {o.ready_seconds:.2f} s" if o.ready_seconds else "")
                       + (f", verified answer {o.verified_digest}" if o.verified_digest else "")
                       + (f"; ports {ports}" if ports else "") + (f"; GPUs {gpus}" if gpus else ""))
    if failed:
        click.echo(f"snapd: {failure_summary(len(failed), len(outcomes))}", err=True)
        if any(e.error_class in ("ProcessBusy", "PidsInUse") for e in failed):
            click.echo("snapd: a snapshot restores more than once at a time only if its tree was started with "
                       "`snapd run` (Snapshot.replicable)", err=True)
        sys.exit(failed[0].exit_code)
