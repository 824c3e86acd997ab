"""GPU checkpoint/restore of the reference inference server (marker ``gpu``).

Skipped, with the reason, where no NVIDIA GPU with the CUDA checkpoint API is
present. Each test asserts on greedy tokens: the restored server must answer
exactly as it did before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import manifestlib
from harness import Daemon, Workloads, gone, serving, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import AsyncSnapdClient, SnapdClient, SnapdClientError, errors
from snapd_client.client import state_name
from snapd_daemon.host import cuda as driver
from snapd_daemon.host.cgroups import cgroup2_mount
from snapd_daemon.host.gpu import inventory
from snapd_daemon.host.probes import answer_digest
from snapd_daemon.runtime.holds import HoldJournal, HoldRecord

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "bench" / "reference_server.py"
PROMPT = [1, 15, 300, 42, 7, 99, 1000, 5]


def _gpu_missing() -> str:
    if not driver.available():
        return "libcuda.so.1 with the checkpoint API (driver >= 570) is not present"
    if not inventory()[1]:
        return "NVML reports no NVIDIA GPU"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (the reference server needs it)"
    return ""


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_gpu_missing()), reason=_gpu_missing() or "GPU present")]


@dataclass
class Server:
    pid: int
    port: int
    info: dict[str, object]

    def ask(self, max_new_tokens: int = 16) -> dict[str, object]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/generate", method="POST",
                                     data=json.dumps({"tokens": PROMPT, "max_new_tokens": max_new_tokens}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())


@pytest.fixture
def start_server(weights: Path, tmp_path: Path, workloads: Workloads) -> Iterator:
    started: list[int] = []

    def start(*flags: str) -> Server:
        """Start the server, its output going to a write-only file (which may grow after a
        --leave-running snapshot: snapd lifts CRIU's size check for such files)."""
        ready = tmp_path / f"ready-{len(started)}.json"
        log_path = tmp_path / f"server-{len(started)}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen([sys.executable, str(SERVER), "--weights-dir", str(weights), "--preset", "tiny",
                                 "--port", "0", "--ready-file", str(ready), *flags],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        threading.Thread(target=proc.wait, daemon=True).start()
        started.append(proc.pid)
        wait_for(lambda: ready.exists() or proc.poll() is not None, 600, "the reference server to be ready")
        assert ready.exists(), log_path.read_text()[-3000:]
        info = json.loads(ready.read_text())
        return Server(pid=proc.pid, port=int(info["port"]), info=info)

    yield start
    for pid in started:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tree_pids(root: int) -> list[int]:
    return [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]


def test_single_process_server_answers_identically_after_restore(client: SnapdClient, start_server) -> None:
    server = start_server("--kv-cache-fraction", "0.05", "--cuda-graph")
    before = server.ask()
    snap = client.checkpoint(server.pid, name="tiny")
    assert list(snap.gpu.cuda_pids) == [server.pid] and snap.gpu.devices
    wait_for(lambda: gone(server.pid), 30, "the server to stop")
    started = time.monotonic()
    result = client.restore("tiny")
    after = server.ask()
    print(f"restore {result.duration_seconds:.2f} s, first answer {time.monotonic() - started:.2f} s")
    assert after["tokens"] == before["tokens"]
    assert after["graph_checksum"] == before["graph_checksum"] is not None
    assert driver.state(server.pid) == driver.CudaState.RUNNING


def test_engine_child_mode_two_cuda_processes(client: SnapdClient, start_server) -> None:
    server = start_server("--engine-process")
    before = server.ask()
    engine = int(server.info["engine_pid"])  # type: ignore[arg-type]
    snap = client.checkpoint(server.pid)
    assert sorted(snap.gpu.cuda_pids) == sorted([server.pid, engine])
    wait_for(lambda: gone(server.pid) and gone(engine), 30, "the server tree to stop")
    result = client.restore(snap.id)
    assert server.ask()["tokens"] == before["tokens"]
    # the instance records its GPUs and what each process holds there; stop frees both pids and GPU memory
    inst = client.instance(result.instance_id)
    assert list(inst.gpus) == sorted(set(result.gpus.values()))
    assert {server.pid, engine} <= {p.pid for p in inst.processes if p.gpu_memory_bytes}
    stopped = client.stop_instance(result.instance_id)
    assert state_name(stopped.state) == "stopped"
    assert not {server.pid, engine} & _compute_pids() and gone(server.pid) and gone(engine)


def test_leave_running_then_restore_onto_explicit_gpu_map(client: SnapdClient, start_server) -> None:
    server = start_server()
    before = server.ask()
    snap = client.checkpoint(server.pid, leave_running=True)
    assert server.ask()["tokens"] == before["tokens"]  # the original serves on
    assert driver.state(server.pid) == driver.CudaState.RUNNING
    for pid in _tree_pids(server.pid):
        os.kill(pid, signal.SIGKILL)
    uuid = snap.gpu.devices[0].uuid
    client.restore(snap.id, wait_for_exit_seconds=30, gpu_uuid_map={uuid: uuid})
    assert server.ask()["tokens"] == before["tokens"]


def test_criu_failure_after_gpu_checkpoint_rolls_back(tmp_path: Path, start_server) -> None:
    server = start_server("--kv-cache-fraction", "0.02")
    before = server.ask()
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(tiny)], check=True)
    d = Daemon(tmp_path / "d", ("--scratch", "disk"))
    d.root.mkdir()
    d.state_dir = tiny / "state"
    d.start()
    try:
        with d.client() as c, pytest.raises(SnapdClientError) as info:
            c.checkpoint(server.pid)
        assert info.value.error_class in ("StoreFull", "CriuFailed"), info.value.message
        assert driver.state(server.pid) == driver.CudaState.RUNNING
        assert server.ask()["tokens"] == before["tokens"]
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(tiny)], check=False)


def test_gpu_memory_that_would_not_fit_in_host_memory_is_refused_before_anything_is_frozen(
        client: SnapdClient, start_server) -> None:
    """The driver copies GPU memory into the process's host memory, charged to its cgroup: a
    server in a group with less room than its VRAM is refused up front (where the OOM killer
    would otherwise end it mid-checkpoint), and keeps serving."""
    mount = cgroup2_mount()
    if mount is None or "memory" not in (mount / "cgroup.subtree_control").read_text().split():
        pytest.skip("no cgroup2 memory controller to limit the server's host memory with")
    server = start_server("--kv-cache-fraction", "0.02")
    before = server.ask()
    group = mount / f"snapd-test-{secrets.token_hex(4)}"
    group.mkdir()
    try:
        # charges made before the move stay where they were: the group starts nearly empty
        (group / "cgroup.procs").write_text(str(server.pid))
        (group / "memory.max").write_text(str(64 << 20))
        with pytest.raises(SnapdClientError) as info:
            client.checkpoint(server.pid)
        err = info.value
        assert err.error_class == "HostMemoryShort" and err.exit_code == 64, err.message
        assert f"pids [{server.pid}]" in err.message and f"cgroup /{group.name} (memory.max {64 << 20})" in err.message
        assert "has room for 0;" in err.message
        assert driver.state(server.pid) == driver.CudaState.RUNNING
        assert not client.list().snapshots
        (group / "memory.max").write_text("max")
        assert server.ask()["tokens"] == before["tokens"]
    finally:
        (group / "memory.max").write_text("max")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        wait_for(lambda: "populated 0" in (group / "cgroup.events").read_text(), 30, f"{group} to empty")
        group.rmdir()


def test_restore_on_mismatched_gpu_is_refused(daemon: Daemon, start_server) -> None:
    server = start_server()
    with daemon.client() as c:
        snap = c.checkpoint(server.pid)
    wait_for(lambda: gone(server.pid), 30, "the server to stop")
    daemon.stop()
    path = daemon.state_dir / "manifests" / f"{snap.id}.json"
    manifest = json.loads(path.read_text())
    manifest["gpu"]["devices"][0]["name"] = "NVIDIA A100-SXM4-40GB"
    path.write_bytes(manifestlib.reseal(manifest))  # as another host's snapshot would be: intact
    daemon.start()
    with daemon.client() as c, pytest.raises(SnapdClientError) as info:
        c.restore(snap.id)
    assert info.value.error_class == "GpuMismatch" and "was a NVIDIA A100-SXM4-40GB" in info.value.message
    assert gone(server.pid)


def test_forked_cuda_child_is_refused_before_anything_is_frozen(client: SnapdClient, tmp_path: Path,
                                                                workloads: Workloads) -> None:
    script = tmp_path / "forker.py"
    script.write_text(
        "import os, time, torch\n"
        "x = torch.ones(1 << 20, device='cuda')\n"
        "if os.fork() == 0:\n"
        "    time.sleep(3600)\n"
        f"open({str(tmp_path / 'up')!r}, 'w').close()\n"
        "while True:\n"
        "    x.add_(1); torch.cuda.synchronize(); time.sleep(0.1)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for((tmp_path / "up").exists, 120, "the CUDA parent to start")
    child = _tree_pids(proc.pid)[1]
    with pytest.raises(SnapdClientError) as info:
        client.checkpoint(proc.pid)
    err = info.value
    assert err.error_class == "GpuUnsupported" and f"pid {child}" in err.message
    assert "TORCHINDUCTOR_COMPILE_THREADS=1" in err.message
    assert driver.state(proc.pid) == driver.CudaState.RUNNING
    proc.kill()


def test_process_frozen_on_gpu_side_is_refused_then_thawed_by_restart(daemon: Daemon, start_server) -> None:
    server = start_server()
    before = server.ask()
    driver.lock(server.pid, 30_000)
    driver.checkpoint(server.pid)  # as a crashed tool would leave it: no /dev/nvidia* files any more
    try:
        with daemon.client() as c, pytest.raises(SnapdClientError) as info:
            c.checkpoint(server.pid)
        assert info.value.error_class == "GpuUnsupported" and "CUDA state is checkpointed" in info.value.message
        assert driver.state(server.pid) == driver.CudaState.CHECKPOINTED  # refused before touching it
        # a record as a daemon killed mid-checkpoint leaves: the next start thaws the process
        daemon.stop()
        # written through the journal itself, so the record has every field recovery checks
        # (a hand-written one lacked the boot id and was dropped unacted)
        holds = daemon.state_dir / "holds"
        HoldJournal(holds).write("op-crashed", HoldRecord(
            processes=[(server.pid, psutil.Process(server.pid).create_time())], cuda_pids=[server.pid]))
        daemon.start()
        assert driver.state(server.pid) == driver.CudaState.RUNNING and not list(holds.iterdir())
    finally:
        driver.thaw(server.pid)
    assert server.ask()["tokens"] == before["tokens"]


def _compute_pids() -> set[int]:
    """Pids NVML lists as holding GPU memory."""
    from snapd_daemon.host import nvml

    return {pid for device in nvml.read().devices for pid in device.compute}


def _nothing_of(pids: list[int]) -> None:
    """No process of ``pids`` lives (stopped, half-restored or running), none holds GPU memory."""
    wait_for(lambda: all(gone(p) for p in pids), 30, f"pids {pids} to be gone")
    # the driver tears a dead process's GPU context down after the process is reaped
    wait_for(lambda: not set(pids) & _compute_pids(), 30, f"NVML to list none of pids {pids}")


def _corrupt_largest_chunk(daemon: Daemon) -> None:
    """Flip a byte in the middle of the largest stored chunk (in the host copy of VRAM)."""
    victim = max((daemon.state_dir / "chunks").glob("*/*"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))


def test_gpu_restore_with_a_corrupt_chunk_leaves_nothing(daemon: Daemon, start_server) -> None:
    """All or nothing on the GPU: a chunk that fails its hash (the largest stored one, in the
    region holding the host copy of VRAM) ends the restore with ChunkCorrupt and no process
    of the snapshot alive or holding GPU memory."""
    server = start_server("--kv-cache-fraction", "0.02")
    with daemon.client() as c:
        snap = c.checkpoint(server.pid)
        wait_for(lambda: gone(server.pid), 30, "the server to stop")
        _corrupt_largest_chunk(daemon)
        with pytest.raises(SnapdClientError) as info:
            c.restore(snap.id)
    assert info.value.error_class == "ChunkCorrupt", info.value.message
    _nothing_of([p.pid for p in snap.processes])


def _through_uffds(d: Daemon, c: SnapdClient, server: Server, tokens: list[int]) -> pb.Snapshot:
    """Checkpoint ``server`` through ``d`` (a daemon writing memory through uffds), restore it within
    120 s (printing the daemon's slow_phase lines, the tree's kernel stacks every 10 s with
    ``--slow-phase-seconds 10``, and the fill's, whatever happened), check that it answers
    ``tokens`` and that the fill wrote its memory, then stop it; the snapshot."""
    snap = c.checkpoint(server.pid)
    wait_for(lambda: gone(server.pid), 30, "the server tree to stop")
    try:
        result = c.restore(snap.id, timeout=120)
    finally:
        print(*[ln for ln in d.log.read_text().splitlines() if '"slow_phase"' in ln or "restore.postcopy" in ln],
              sep="\n")
    assert server.ask()["tokens"] == tokens
    [done] = [json.loads(ln) for ln in d.log.read_text().splitlines() if '"event": "restore.postcopy"' in ln]
    print(f"restore {result.duration_seconds:.2f} s; fill {done}")
    assert int(done["fill_bytes"]) > 0  # type: ignore[call-overload]  # the cut-out memory went this way
    c.stop_instance(result.instance_id)
    return snap


def test_post_copy_gpu_restore_then_a_corrupt_chunk_under_it(tmp_path: Path, start_server) -> None:
    """``restore_overlap = "gpu"``: both CUDA processes' memory is filled through CRIU's lazy
    pages while their CUDA restore runs (the driver's reads of the host copy of VRAM wait on
    missing pages): the server answers with its tokens. Then, with the largest stored chunk
    (host copy of VRAM) corrupted, a restore under post-copy fails with ChunkCorrupt and
    leaves no process of the snapshot alive or holding GPU memory, its tree having run."""
    server = start_server("--engine-process", "--kv-cache-fraction", "0.02")
    before = server.ask()
    with serving(tmp_path / "lazy", "--restore-overlap", "gpu", "--slow-phase-seconds", "10") as d, d.client() as c:
        snap = _through_uffds(d, c, server, before["tokens"])
        wait_for(lambda: gone(server.pid), 30, "the restored server to stop")
        _corrupt_largest_chunk(d)
        with pytest.raises(SnapdClientError) as info:
            c.restore(snap.id)
    assert info.value.error_class == "ChunkCorrupt", info.value.message
    _nothing_of([p.pid for p in snap.processes])


def test_daemon_killed_during_gpu_restore_leaves_nothing_half_restored(daemon: Daemon, start_server) -> None:
    """A daemon SIGKILLed while a GPU tree is being restored (from CRIU on) is followed, at its
    next start, by nothing half-restored: either the whole server answers as before, or no
    process of it is left and a new restore brings it back answering as before."""
    server = start_server("--kv-cache-fraction", "0.02")
    before = server.ask()
    with daemon.client() as c:
        snap = c.checkpoint(server.pid)
    wait_for(lambda: gone(server.pid), 30, "the server to stop")
    pids = [p.pid for p in snap.processes]
    reached = threading.Event()

    def watch(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.phase in (pb.PHASE_RESTORE, pb.PHASE_INJECT, pb.PHASE_GPU_RESTORE):
            reached.set()

    def run() -> None:
        with daemon.client() as c, contextlib.suppress(SnapdClientError):
            c.restore(snap.id, on_progress=watch)

    thread = threading.Thread(target=run)
    thread.start()
    assert reached.wait(300), "the restore never reached CRIU"
    daemon.stop(signal.SIGKILL)
    thread.join(60)
    daemon.start()
    with daemon.client() as c:
        recovered = c.status().recovered_operations
    if recovered:
        _nothing_of(pids)
        with daemon.client() as c:
            c.restore(snap.id, wait_for_exit_seconds=30)
    assert server.ask()["tokens"] == before["tokens"]
    assert driver.state(server.pid) == driver.CudaState.RUNNING


def test_sleep_mode_hooks_keep_the_kv_cache_out_of_the_snapshot(client: SnapdClient, start_server) -> None:
    """vLLM's recipe: POST /sleep?level=1 as the pre-checkpoint hook releases the KV cache, so the
    driver does not copy it; POST /wake_up as the post-restore hook allocates it again."""
    server = start_server("--kv-cache-fraction", "0.2", "--cuda-graph")
    before = server.ask()
    ask = [sys.executable, str(SERVER), "ask", "--port", str(server.port)]
    plain = client.checkpoint(server.pid, leave_running=True)
    slept = client.checkpoint(server.pid, pre_checkpoint_hook=[*ask, "--sleep"])
    wait_for(lambda: gone(server.pid), 30, "the server to stop")
    gpu_bytes = inventory()[1][0].memory_bytes
    print(f"image {plain.raw_bytes / 1e9:.2f} GB without the hook, {slept.raw_bytes / 1e9:.2f} GB with it")
    assert plain.raw_bytes - slept.raw_bytes > 0.1 * gpu_bytes  # most of the 20% reservation is gone
    client.restore(slept.id, post_restore_hook=[*ask, "--wake-up"])
    after = server.ask()
    assert after["tokens"] == before["tokens"] and after["graph_checksum"] == before["graph_checksum"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/is_sleeping", timeout=30) as resp:
        state = json.loads(resp.read())
    assert state["is_sleeping"] is False and state["kv_cache_bytes"] > 0.1 * gpu_bytes


def _free_bytes(uuid: str) -> int:
    from snapd_daemon.host import nvml

    return next(d.free_bytes for d in nvml.read().devices if d.uuid == uuid)


@pytest.mark.gpu_alone
def test_shared_gpu_two_snapshots_side_by_side_then_two_racing_for_the_last_room(
        daemon: Daemon, start_server) -> None:
    """Placement by room (docs/gpu-placement.md). Two different servers' snapshots, each taken
    with a readiness probe (GET /health) and an answer check (the greedy completion of PROMPT,
    its tokens digested: docs/readiness.md), restore side by side onto the one GPU they were
    taken on (shared, the default), each ready and verified (--verify), answering as before.
    Then, with the daemon's margin set so that the GPU has room for exactly one of them, both
    are restored at once: one is placed, the other refused (GpuRoomShort, exit 80) with the
    figures, having created nothing; the reservation of the first is what refuses the second
    (NVML does not show it yet when the second chooses) or, if it came later, its real use."""
    servers = [start_server("--kv-cache-fraction", "0.05"), start_server("--kv-cache-fraction", "0.05")]
    answers = [s.ask() for s in servers]
    completion = json.dumps({"tokens": PROMPT, "max_new_tokens": 16})
    with daemon.client() as c:
        snaps = [c.checkpoint(s.pid, ready_http=f"http://127.0.0.1:{s.port}/health", ready_timeout_ms=300_000,
                              verify_http=f"http://127.0.0.1:{s.port}/generate", verify_body=completion,
                              verify_field="tokens", verify_timeout_ms=300_000) for s in servers]
    # the answer recorded at checkpoint is the greedy completion the server gave before
    digests = [answer_digest(json.dumps({"tokens": a["tokens"]}).encode(), "tokens") for a in answers]
    for snap, digest in zip(snaps, digests, strict=True):
        assert snap.ready_probe.startswith("GET http://127.0.0.1:") and snap.answer_check.endswith(digest)
    for s in servers:
        wait_for(lambda s=s: gone(s.pid), 30, "the server to stop")
    assert all(s.gpu.vram_bytes for s in snaps), "NVML listed no GPU memory for the servers' pids"
    [uuid] = {next(iter(s.gpu.vram_bytes)) for s in snaps}  # both were taken on one GPU
    needs = [s.gpu.vram_bytes[uuid] for s in snaps]
    assert all(n > 0 for n in needs), needs

    # side by side (shared, the default): both onto the GPU they were taken on
    with daemon.client() as c:
        for snap, server, before in zip(snaps, servers, answers, strict=True):
            started = time.monotonic()
            result = c.restore(snap.id, verify=True)
            assert dict(result.gpus) == {uuid: uuid}
            assert result.verified_digest == digests[snaps.index(snap)] and result.ready_seconds > 0
            inst = c.instance(result.instance_id)
            assert state_name(inst.state) == "ready" and inst.ready_seconds == result.ready_seconds
            assert server.ask()["tokens"] == before["tokens"]
            print(f"\n{snap.id}: restore {result.duration_seconds:.2f} s, ready in {result.ready_seconds:.2f} s, "
                  f"verified answer {result.verified_digest[:16]}, restore -> first answer "
                  f"{time.monotonic() - started:.2f} s, VRAM recorded {needs[snaps.index(snap)] / 2**30:.2f} GiB")
        with pytest.raises(SnapdClientError) as busy:  # the old rule, asked for: no idle GPU of the model
            c.restore(snaps[0].id, gpu_policy="exclusive")
        assert busy.value.error_class in ("GpusBusy", "PidsInUse"), busy.value.message
    for s in servers:
        os.killpg(s.pid, signal.SIGKILL)
    _nothing_of([s.pid for s in servers])

    # room for exactly one: margin m with need_i + m <= free and free - need_i < need_j + m
    model = next(d.name for d in snaps[0].gpu.devices if d.uuid == uuid)
    if sum(d.name == model for d in inventory()[1]) > 1:
        pytest.skip(f"the race needs the only {model} of the host (another would take the second restore)")
    free = _free_bytes(uuid)
    margin = free - max(needs) - min(needs) // 2
    assert margin > 0, (free, needs)
    daemon.stop()
    tight = Daemon(daemon.root, ("--gpu-margin", str(margin))).start()
    try:
        async def race() -> list[object]:
            async with AsyncSnapdClient(tight.target) as c:
                return list(await asyncio.gather(*(c.restore(s.id) for s in snaps), return_exceptions=True))

        outcomes = asyncio.run(race())
        placed = [(i, o) for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
        refused = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, errors.GpuRoomShort)]
        assert len(placed) == 1 and len(refused) == 1, outcomes
        (won, result), (lost, err) = placed[0], refused[0]
        assert dict(result.gpus) == {uuid: uuid}  # type: ignore[union-attr]
        assert err.exit_code == 80 and err.code.name == "RESOURCE_EXHAUSTED"
        print(f"\nrefused: {err.message}")
        [room] = err.fields["room"]
        assert room["uuid"] == uuid and room["needed_bytes"] == needs[lost] + margin
        assert room["free_bytes"] - sum(r["bytes"] for r in room["reserved"]) < room["needed_bytes"]
        assert f"({uuid}) needs" in err.message and "free of" in err.message
        # who holds the rest: the winner's reservation, or the winner itself once on the GPU
        winner_pids = {p.pid for p in snaps[won].processes}
        assert room["reserved"] or {h["pid"] for h in room["holders"]} & winner_pids, room
        assert servers[won].ask()["tokens"] == answers[won]["tokens"]
        assert all(gone(p.pid) for p in snaps[lost].processes)  # refused before anything was created
    finally:
        tight.stop()


def test_uffd_injection_restores_a_gpu_server_tree(tmp_path: Path, start_server) -> None:
    """``inject_method = "uffd"``: the host copy of VRAM and the rest written through CRIU's lazy
    pages' uffds into the stopped tree, the uffds closed before the resume and the CUDA restore:
    the server answers with its tokens. Last in the file: a hang here holds up nothing else."""
    server = start_server("--kv-cache-fraction", "0.02")
    before = server.ask()
    with serving(tmp_path / "uffd", "--inject-method", "uffd", "--slow-phase-seconds", "10") as d, d.client() as c:
        _through_uffds(d, c, server, before["tokens"])
