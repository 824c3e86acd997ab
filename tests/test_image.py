"""snapd's OCI image (deploy/image/Containerfile, built by scripts/build-image.sh from Debian
bases made here) serves in a privileged podman container the way deploy/k8s/daemonset.yaml runs
it: host pid namespace, the host's cgroup tree, state and socket directories from the host.
Inside it `snapd status` passes its CRIU checks, and a process started in the container is
checkpointed and restored with its memory and its state."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import WORKLOADS, ask, gone, wait_for, wait_unmounted

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "scripts" / "build-image.sh"
NO_CONTAINERS = 3  # build-image.sh's exit status when podman cannot run a container here
# the CRIU the image builds: install-criu.sh's
CRIU_VERSION = re.search(r'^CRIU_VERSION="([^"]+)"', (REPO / "scripts" / "install-criu.sh").read_text(), re.M)[1]

# a cold build makes the two Debian bases and CRIU first (minutes); a warm one takes seconds
pytestmark = pytest.mark.timeout(1800)


@dataclass(frozen=True)
class Image:
    tag: str
    run_flags: list[str]  # what podman needs to run a container on this machine


@dataclass(frozen=True)
class Container:
    name: str
    reports: Path  # the container's /reports

    def exec(self, *argv: str, detach: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", "exec", *(["-d"] if detach else []), self.name, *argv],
                              capture_output=True, text=True, timeout=300)

    def snapd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The image's CLI, in the container, against the daemon the container serves."""
        return self.exec("snapd", "--json", *args)

    def logs(self) -> str:
        return subprocess.run(["podman", "logs", self.name], capture_output=True, text=True).stdout[-4000:]


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUILD), *args], capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def image() -> Image:
    assert shutil.which("podman"), "podman is not installed: scripts/bootstrap.sh installs it"
    flags = _script("--run-flags")
    if flags.returncode == NO_CONTAINERS:
        pytest.skip(f"podman cannot run containers on this machine: {flags.stderr.strip()}")
    assert flags.returncode == 0, flags.stderr[-3000:]
    built = _script()
    assert built.returncode == 0, built.stderr[-3000:]
    return Image(tag=built.stdout.split()[-1], run_flags=flags.stdout.split())


@pytest.fixture(scope="module")
def container(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    root = tmp_path_factory.mktemp("image")
    shm = Path("/dev/shm") / f"gpu-snapd-image-test-{uuid.uuid4().hex[:8]}"
    for d in (root / "state", root / "run", root / "reports", shm):
        d.mkdir()
    name = f"snapd-image-test-{uuid.uuid4().hex[:8]}"
    run = subprocess.run(
        ["podman", "run", "-d", "--name", name, "--privileged", "--pid=host", "--network", "none",
         *image.run_flags, "--tmpfs", "/run",
         "-v", f"{root / 'state'}:/var/lib/gpu-snapd", "-v", f"{root / 'run'}:/run/gpu-snapd",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup", "-v", f"{shm}:/dev/shm/gpu-snapd",
         "-v", f"{WORKLOADS}:/workloads:ro", "-v", f"{root / 'reports'}:/reports", image.tag],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    box_id = run.stdout.strip()  # its mounts on the host (shm, the overlay) are named by its id and root
    merged = subprocess.run(["podman", "inspect", box_id, "--format", "{{.GraphDriver.Data.MergedDir}}"],
                            capture_output=True, text=True, timeout=120).stdout.strip()
    box = Container(name=name, reports=root / "reports")
    try:
        try:
            wait_for(lambda: box.snapd("list").returncode == 0, 60, f"the daemon in {name} to serve")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{box.logs()}") from None
        yield box
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True, timeout=120)
        wait_unmounted(*filter(None, [box_id, merged]))
        shutil.rmtree(shm, ignore_errors=True)


def test_status_finds_the_images_criu_and_criu_check_passes(container: Container) -> None:
    status = container.snapd("status")
    checks = {c["name"]: c for c in json.loads(status.stdout)["checks"]}
    assert checks["criu"]["ok"] and checks["criu"]["detail"] == f"criu {CRIU_VERSION} at /usr/local/bin/criu", checks
    # "Looks good." and no warning: the /run tmpfs (as the DaemonSet mounts) keeps CRIU's kernel probe
    assert checks["criu-check"]["ok"] and checks["criu-check"]["detail"] == "Looks good.", checks["criu-check"]


def test_process_started_in_the_container_comes_back_with_its_memory(container: Container) -> None:
    report = container.reports / "memhold.report"
    started = container.exec("sh", "-c", "exec setsid python3 /workloads/memhold.py 32 /reports/memhold.report "
                             "</dev/null >/dev/null 2>&1", detach=True)
    assert started.returncode == 0, started.stderr
    wait_for(report.exists, 60, "memhold in the container to report")
    pid = int(report.read_text().split()[0])  # the host's pid too: the container shares its pid namespace
    try:
        _, digest, checks = ask(pid, report)
        assert checks == "2"

        taken = container.snapd("checkpoint", str(pid), "--name", "image-test")
        assert taken.returncode == 0, f"{taken.stderr}\n{container.logs()}"
        wait_for(lambda: gone(pid), 30, f"the checkpointed pid {pid} to end")

        restored = container.snapd("restore", "image-test")
        assert restored.returncode == 0, f"{restored.stderr}\n{container.logs()}"
        # same pid, same bytes in memory, and the check count carries on from where it stopped
        assert ask(pid, report) == [str(pid), digest, "3"]
    finally:
        container.exec("kill", "-KILL", str(pid))
