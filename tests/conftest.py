"""Fixtures: a real snapd daemon (subprocess, real CRIU) and real workload processes,
from the harness in harness.py (which the benchmarks share)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Daemon, Workloads

from snapd_client import SnapdClient


@pytest.fixture(scope="session", autouse=True)
def _free_daemon_ram() -> Iterator[None]:
    """Every test daemon's RAM directory (hot tier) outlives it by design: free them all."""
    yield
    for d in Daemon.made:
        d.remove_ram()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path).start()
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[SnapdClient]:
    with daemon.client() as c:
        yield c


@pytest.fixture
def workloads(tmp_path: Path) -> Iterator[Workloads]:
    w = Workloads(tmp_path)
    yield w
    w.kill_all()
