"""Call the daemon as another user, for the access tests.

usage: peer_client.py TARGET UID GID [GROUP,...]   (supplementary gids, comma-separated)

Everything is imported while still root (the interpreter may live where other
users cannot read), then the process drops to UID/GID/GROUPS and only then
connects, so the daemon's socket sees those credentials. Prints one JSON line:
{"ok": true} or {"ok": false, "code": ..., "error_class": ..., "exit_code": ..., "message": ...}.
"""

import json
import os
import sys

from snapd_client import SnapdClient, SnapdClientError

target, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([int(g) for g in sys.argv[4].split(",")] if len(sys.argv) > 4 else [])
os.setgid(gid)
os.setuid(uid)
try:
    with SnapdClient(target, timeout=30) as client:
        client.list()
    print(json.dumps({"ok": True}))
except SnapdClientError as err:
    print(json.dumps({"ok": False, "code": err.code.name, "error_class": err.error_class,
                      "exit_code": err.exit_code, "message": err.message}))
