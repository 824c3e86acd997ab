"""Call the daemon as another user, for the access tests.

usage: peer_client.py TARGET UID GID [GROUP,...] [-- SNAPD ARGS...]   (supplementary gids, comma-separated)

Everything is imported, and a channel made and closed (gRPC imports its channel code on
first use), while still root: the interpreter and the checkout may live where other users
cannot read (a checkout in root's home). Then the process drops to UID/GID/GROUPS and only
then connects, so the daemon's socket sees those credentials. Without SNAPD ARGS it lists
snapshots and prints one JSON line: {"ok": true} or {"ok": false, "code": ..., "error_class":
..., "exit_code": ..., "message": ...}; with them it runs the `snapd` CLI on them.
"""

import json
import os
import sys

from snapd_client import SnapdClient, SnapdClientError
from snapd_client.cli import main

args = sys.argv[1:]
cli_args = args[args.index("--") + 1:] if "--" in args else None
args = args[: args.index("--")] if "--" in args else args
target, uid, gid = args[0], int(args[1]), int(args[2])
SnapdClient(target).close()
os.setgroups([int(g) for g in args[3].split(",")] if len(args) > 3 else [])
os.setgid(gid)
os.setuid(uid)
if cli_args is not None:
    sys.argv = ["snapd", "--target", target, *cli_args]
    main()
try:
    with SnapdClient(target, timeout=30) as client:
        client.list()
    print(json.dumps({"ok": True}))
except SnapdClientError as err:
    print(json.dumps({"ok": False, "code": err.code.name, "error_class": err.error_class,
                      "exit_code": err.exit_code, "message": err.message}))
