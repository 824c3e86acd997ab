"""Find a usable CRIU binary and describe it."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from snapd_daemon.criu import swrk
from snapd_daemon.errors import CriuUnavailable

MIN_VERSION = (4, 0)
# Where scripts/install-criu.sh builds CRIU when the host has none that works.
PRIVATE_INSTALL = "/opt/gpu-snapd/criu/bin/criu"


@dataclass(frozen=True)
class Criu:
    path: str
    version: str

    def ip_tool(self) -> str:
        """The iproute2 ``ip`` CRIU will run to save and restore a network namespace's
        addresses and routes ("" if it has none): $CR_IP_TOOL when set (CRIU then runs
        only that), else the one a bundle from install-criu.sh carries (its wrapper sets
        CR_IP_TOOL to it), else the ``ip`` on PATH."""
        configured = os.environ.get("CR_IP_TOOL")
        if configured:  # CRIU execvp()s it: a bare name is looked up on PATH
            return shutil.which(configured) or ""
        bundled = os.path.join(os.path.dirname(os.path.realpath(self.path)), "bin", "ip")
        return bundled if os.access(bundled, os.X_OK) else shutil.which("ip") or ""

    def has_feature(self, feature: str) -> bool:
        """`criu check --feature FEATURE` passes on this host (asked once per daemon)."""
        return _has_feature(self.path, feature)

    def require_ip_tool(self, what: str) -> None:
        """CriuUnavailable saying that ``what`` needs it when ``ip_tool`` finds none."""
        if not self.ip_tool():
            configured = os.environ.get("CR_IP_TOOL")
            where = f"CR_IP_TOOL={configured} is not executable" if configured else "none on PATH or in the CRIU bundle"
            raise CriuUnavailable(reason=(
                f"{what} needs iproute2's ip (CRIU runs it to save and restore the namespace's addresses and "
                f"routes), and {where}; install iproute2, set CR_IP_TOOL in the daemon's environment, or use a "
                "bundle made by scripts/install-criu.sh --bundle, which carries it"))


def locate(configured: str | None) -> Criu:
    """Resolve CRIU: the configured path, else snapd's private install, else PATH.

    Raises CriuUnavailable when nothing is found or the version is below 4.0.
    """
    candidates = [configured] if configured else [PRIVATE_INSTALL, shutil.which("criu")]
    path = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if path is None:
        where = configured or f"{PRIVATE_INSTALL} or PATH"
        raise CriuUnavailable(reason=f"no criu executable at {where}")
    try:
        found = swrk.version(path)
    except (OSError, swrk.SwrkError) as exc:
        raise CriuUnavailable(reason=f"{path} does not answer RPC version requests ({exc})") from exc
    major_minor = tuple(int(p) for p in found.split(".")[:2])
    if major_minor < MIN_VERSION:
        raise CriuUnavailable(reason=f"{path} is criu {found}; snapd needs >= 4.0 (3.x fails on kernels >= 6.x)")
    return Criu(path=os.path.abspath(path), version=found)


def self_check(criu: Criu) -> tuple[bool, str]:
    """Run `criu check`; returns (passed, last meaningful output line)."""
    proc = subprocess.run(
        [criu.path, "check"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and "RLIMIT_NOFILE" not in ln]
    detail = lines[-1] if lines else f"exit status {proc.returncode}"
    return proc.returncode == 0, detail


@functools.cache
def _has_feature(path: str, feature: str) -> bool:
    try:
        proc = subprocess.run([path, "check", "--feature", feature], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0
