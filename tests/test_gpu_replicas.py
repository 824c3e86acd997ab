"""Issue #13 on GPUs (marker ``gpu``): replicas of one snapshot on different GPUs, a process
with CUDA contexts on two GPUs, and a tensor-parallel (NCCL) server through its hooks.

Skipped, with the reason, without an NVIDIA GPU with the checkpoint API; the tests that
need two GPUs skip on a host with one. Each asserts on what the process computes: the
restored copy must answer exactly as the original did.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness import Daemon, Workloads, ask, gone, restore_at_once, wait_for
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.host import cuda as driver
from snapd_daemon.host import nvml
from snapd_daemon.host.gpu import inventory

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "bench" / "reference_server.py"
PROMPT = [1, 15, 300, 42, 7, 99, 1000, 5]


def _missing(gpus: int) -> str:
    if not driver.available():
        return "libcuda.so.1 with the checkpoint API (driver >= 570) is not present"
    found = len(inventory()[1])
    if found < gpus:
        return f"needs {gpus} NVIDIA GPUs; NVML reports {found}"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (the workloads need it)"
    return ""


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_missing(1)), reason=_missing(1) or "a GPU present")]
two_gpus = pytest.mark.skipif(bool(_missing(2)), reason=_missing(2) or "2 GPUs present")


def generate(address: str) -> list[int]:
    req = urllib.request.Request(f"http://{address}/generate", method="POST",
                                 data=json.dumps({"tokens": PROMPT, "max_new_tokens": 16}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return list(json.loads(resp.read())["tokens"])


def on_gpus(pid: int) -> set[str]:
    """UUIDs of the GPUs NVML lists ``pid`` on."""
    return {d.uuid for d in nvml.read().devices if pid in d.compute}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp: Path, argv: list[str], ready: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{ready.stem}.log", "wb")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    wait_for(lambda: ready.exists() or proc.poll() is not None, 900, "the reference server to be ready")
    assert ready.exists(), (tmp / f"{ready.stem}.log").read_text()[-3000:]
    return proc


def _replicable_server(client: SnapdClient, weights: Path, tmp: Path) -> list[int]:
    """Start the reference server under `snapd run --netns`, checkpoint it as "ref-tiny" (the
    source stops); the tokens it answered."""
    host_port, ready = _free_port(), tmp / "ready.json"
    _start(tmp, [sys.executable, "-m", "snapd_daemon", "run", "--name", "ref", "--run-dir", str(tmp / "run"),
                 "--netns", "--publish", f"{host_port}:8000", "--", sys.executable, str(SERVER), "--weights-dir",
                 str(weights), "--preset", "tiny", "--port", "8000", "--ready-file", str(ready),
                 "--kv-cache-fraction", "0.05", "--cuda-graph"], ready)
    init = int((tmp / "run" / "ref.pid").read_text())
    before = generate(f"127.0.0.1:{host_port}")
    snap = client.checkpoint(init, name="ref-tiny")
    assert snap.replicable and list(snap.namespace_ports) == [8000] and snap.gpu.cuda_pids
    wait_for(lambda: gone(init), 60, "the source to stop")
    return before


def test_replicas_take_free_gpus_then_share_one_only_when_asked(client: SnapdClient, weights: Path, tmp_path: Path,
                                                                 workloads: Workloads) -> None:
    """The exclusive policy, on one GPU or more: each replica takes an idle GPU of the snapshot's
    model until none is left; the next is refused (GpusBusy); --gpu-map puts one more on a busy GPU."""
    before = _replicable_server(client, weights, tmp_path)
    model = {d.uuid: d.name for d in inventory()[1]}
    snapshot_gpu = client.get("ref-tiny").gpu.devices[0]
    alike = [uuid for uuid, name in model.items() if name == snapshot_gpu.name]
    taken, old = [], ""
    for _ in alike:
        r = client.restore("ref-tiny", gpu_policy="exclusive")
        [(old, new)] = r.gpus.items()
        taken.append(new)
        assert generate(r.published[0].address) == before
    assert sorted(taken) == sorted(alike)
    with pytest.raises(SnapdClientError) as info:
        client.restore("ref-tiny", gpu_policy="exclusive")
    assert info.value.error_class == "GpusBusy" and snapshot_gpu.name in info.value.message
    shared = client.restore("ref-tiny", gpu_uuid_map={old: taken[0]})
    assert dict(shared.gpus) == {old: taken[0]} and generate(shared.published[0].address) == before


@two_gpus
def test_two_replicas_one_per_gpu_answer_identically_under_the_exclusive_policy(
        daemon: Daemon, client: SnapdClient, weights: Path, tmp_path: Path, workloads: Workloads) -> None:
    before = _replicable_server(client, weights, tmp_path)

    started = time.monotonic()
    one = client.restore("ref-tiny")
    assert generate(one.published[0].address) == before
    one_seconds = time.monotonic() - started
    psutil.Process(one.root_pid).kill()
    wait_for(lambda: gone(one.root_pid) and not any(d.compute for d in nvml.read().devices), 60, "the GPUs to be free")

    started = time.monotonic()
    replicas = restore_at_once(daemon.target, "ref-tiny", 2, gpu_policy="exclusive")
    assert all(not isinstance(r, SnapdClientError) for r in replicas), replicas
    answers = [generate(r.published[0].address) for r in replicas]  # type: ignore[union-attr]
    two_seconds = time.monotonic() - started
    assert answers == [before, before]
    chosen = [next(iter(r.gpus.values())) for r in replicas]  # type: ignore[union-attr]
    assert sorted(chosen) == sorted(inventory_uuids()[:2]), chosen  # one replica per GPU
    for r, gpu in zip(replicas, chosen, strict=True):
        server = next(p for p in r.pids if p != r.root_pid)  # type: ignore[union-attr]
        assert on_gpus(server) == {gpu}
    # every GPU of that model is busy now: a third is refused, naming them
    with pytest.raises(SnapdClientError) as info:
        client.restore("ref-tiny", gpu_policy="exclusive")
    assert info.value.error_class == "GpusBusy" and "--gpu-map" in info.value.message
    durations = ", ".join(f"{r.duration_seconds:.2f} s" for r in replicas)  # type: ignore[union-attr]
    print(f"\nrestore -> first answer: 1 replica {one_seconds:.2f} s (restore {one.duration_seconds:.2f} s); "
          f"2 at once {two_seconds:.2f} s (restores {durations})")


def inventory_uuids() -> list[str]:
    return [d.uuid for d in inventory()[1]]


@two_gpus
def test_one_process_on_two_gpus_restores_onto_the_swapped_pair(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("gpu_pair.py")
    wait_for(lambda: report.exists() and len(report.read_text().split()) == 4, 300, "the two-GPU process")
    before = report.read_text().split()[1:]
    first, second = inventory_uuids()[:2]
    assert on_gpus(pid) == {first, second}
    snap = client.checkpoint(pid)
    assert list(snap.gpu.cuda_pids) == [pid]
    wait_for(lambda: gone(pid), 60, "the process to stop")
    swapped = {first: second, second: first}
    result = client.restore(snap.id, gpu_uuid_map=swapped)
    assert dict(result.gpus) == swapped
    assert ask(pid, report, timeout=120)[1:] == before
    assert on_gpus(pid) == {first, second}
    assert driver.state(pid) == driver.CudaState.RUNNING


@two_gpus
def test_tensor_parallel_server_checkpoints_only_through_its_hooks(client: SnapdClient, weights: Path,
                                                                   tmp_path: Path, workloads: Workloads) -> None:
    ready = tmp_path / "tp-ready.json"
    proc = _start(tmp_path, [sys.executable, str(SERVER), "--weights-dir", str(weights), "--preset", "tiny",
                             "--port", "0", "--ready-file", str(ready), "--tensor-parallel", "2"], ready)
    info = json.loads(ready.read_text())
    address = f"127.0.0.1:{info['port']}"
    before = generate(address)
    # live communicators and no hook: refused before anything is frozen, naming the cause
    with pytest.raises(SnapdClientError) as refusal:
        client.checkpoint(proc.pid)
    assert refusal.value.error_class == "NcclActive", refusal.value.message
    assert "destroy_process_group" in refusal.value.message
    assert generate(address) == before
    hook = [sys.executable, str(SERVER), "hook", "--port", str(info["port"])]
    snap = client.checkpoint(proc.pid, pre_checkpoint_hook=[*hook, "pre-checkpoint"])
    assert len(snap.gpu.cuda_pids) == 2 and info["engine_pid"] in snap.gpu.cuda_pids  # the two ranks
    wait_for(lambda: gone(proc.pid), 60, "the server to stop")
    client.restore(snap.id, post_restore_hook=[*hook, "post-restore"])
    assert generate(address) == before
    assert all(driver.state(p) == driver.CudaState.RUNNING for p in snap.gpu.cuda_pids)


def test_replicas_share_the_snapshots_gpu_by_room_under_the_shared_policy(
        daemon: Daemon, client: SnapdClient, weights: Path, tmp_path: Path, workloads: Workloads) -> None:
    """The default policy: while its GPU has room (NVML's free memory less the reservations of
    the restores in flight, against the VRAM the snapshot recorded plus the margin), every
    replica goes onto the snapshot's own GPU, on a host of one GPU or more."""
    before = _replicable_server(client, weights, tmp_path)
    snap = client.get("ref-tiny")
    [(uuid, need)] = snap.gpu.vram_bytes.items()
    replicas = restore_at_once(daemon.target, "ref-tiny", 2)
    assert all(not isinstance(r, SnapdClientError) for r in replicas), replicas
    assert [dict(r.gpus) for r in replicas] == [{uuid: uuid}] * 2  # type: ignore[union-attr]
    assert [generate(r.published[0].address) for r in replicas] == [before, before]  # type: ignore[union-attr]
    for r in replicas:
        server = next(p for p in r.pids if p != r.root_pid)  # type: ignore[union-attr]
        assert on_gpus(server) == {uuid}
    print(f"\n2 replicas side by side on {uuid}, {need / 2**30:.2f} GiB recorded each")
