"""Write client/snapd_client/errors.json from the daemon's errors (snapd_daemon.errors.ALL_ERRORS).

    .venv/bin/python scripts/gen-client-errors.py

The client package ships alone (it never imports the daemon), so the table its
exception classes are built from (snapd_client/errors.py) is generated here
from the daemon's classes, the source of truth, and committed;
tests/test_client_errors.py checks that it matches them.
"""

from __future__ import annotations

import json
from pathlib import Path

from snapd_daemon.errors import ALL_ERRORS, SnapdError

TABLE = Path(__file__).resolve().parent.parent / "client" / "snapd_client" / "errors.json"


def render() -> str:
    """One object per class, in ALL_ERRORS order: name, parent class, exit code, gRPC status, message template."""
    rows = [{"name": cls.__name__, "parent": "" if cls is SnapdError else cls.__bases__[0].__name__,
             "exit_code": cls.exit_code, "status": cls.status, "template": " ".join((cls.__doc__ or "").split())}
            for cls in ALL_ERRORS]
    return json.dumps({"generated_by": "scripts/gen-client-errors.py from daemon/snapd_daemon/errors/",
                       "errors": rows}, indent=1) + "\n"


if __name__ == "__main__":
    TABLE.write_text(render())
