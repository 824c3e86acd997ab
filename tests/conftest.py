"""Fixtures: a real snapd daemon (subprocess, real CRIU), real workload processes and a
real S3 server, from harness.py and s3server.py (which the benchmarks share)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Daemon, Workloads
from s3server import S3Server
from snapd_client import SnapdClient

REFERENCE_SERVER = Path(__file__).resolve().parent.parent / "scripts" / "bench" / "reference_server.py"

# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so
# would every CLI it starts (the Ctrl-C tests send them SIGINT): give its processes the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# A `snapd run` tree's mount namespace is a copy of the host's mounts as they were when it
# started (host/mountns.py), and restoring its snapshot needs each of them still there: a
# file that mounts or unmounts on the host (tmpfs, podman containers) breaks such a restore
# in a file that runs beside it. With pytest-xdist's --dist loadfile (scripts/test.sh) the
# files of both kinds count as one file: they run one after the other in one worker, while
# every other file runs whole, in order, in a worker of its own choosing.
HOST_MOUNTS = frozenset({
    "test_all_or_nothing", "test_crash_safety", "test_full_disk", "test_image", "test_pods",  # mount
    "test_example_scale", "test_gpu_replicas", "test_operator_edges", "test_readiness", "test_replicas",  # run
})


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, absent without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """loadfile's scheduling, the HOST_MOUNTS files one unit (xdist's own loadgroup does not
    group under pytest 9.2: it renames tests through an attribute pytest no longer reads)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndHostMounts(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "host-mounts" if Path(path).stem in HOST_MOUNTS else path

    return FilesAndHostMounts(config, log)  # type: ignore[arg-type]


@pytest.fixture(scope="session", autouse=True)
def _free_daemon_ram() -> Iterator[None]:
    """Every test daemon's RAM directory (hot tier) outlives it by design: free them all."""
    yield
    for d in Daemon.made:
        d.remove_ram()


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference server's tiny model (GPU tests), generated once per session."""
    path = tmp_path_factory.mktemp("weights") / "tiny"
    subprocess.run([sys.executable, str(REFERENCE_SERVER), "--weights-dir", str(path), "--preset", "tiny",
                    "--prepare-only"], check=True, timeout=600)
    return path


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


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session; tests keep apart by bucket prefix."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.kill()
