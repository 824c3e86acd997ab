"""Pre-checkpoint and post-restore hooks run by the daemon."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from harness import Workloads, ask, gone, wait_for
from snapd_client import SnapdClient, SnapdClientError


def test_hooks_run_with_their_environment(client: SnapdClient, workloads: Workloads, tmp_path: Path) -> None:
    pid, report = workloads.start("memhold.py", "4")
    pre, post = tmp_path / "pre.env", tmp_path / "post.env"
    snap = client.checkpoint(pid, pre_checkpoint_hook=["sh", "-c", f'echo "$SNAPD_PID $SNAPD_OPERATION" > {pre}'])
    got_pid, op = pre.read_text().split()
    assert got_pid == str(pid) and op.startswith("op-")
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    client.restore(snap.id, post_restore_hook=["sh", "-c", f'echo "$SNAPD_PID $SNAPD_SNAPSHOT_ID" > {post}'])
    assert post.read_text().split() == [str(pid), snap.id]
    assert ask(pid, report)[0] == str(pid)


def test_failing_pre_hook_cancels_before_anything_is_frozen(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "4")
    with pytest.raises(SnapdClientError) as info:
        client.checkpoint(pid, pre_checkpoint_hook=["sh", "-c", "echo vllm said no >&2; exit 3"])
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_class == "HookFailed"
    assert "pre-checkpoint hook" in err.message and "exit status 3: vllm said no" in err.message
    assert list(client.list().snapshots) == []
    assert ask(pid, report)[0] == str(pid)


def test_failing_post_hook_kills_the_restored_tree(client: SnapdClient, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    with pytest.raises(SnapdClientError) as info:
        client.restore(snap.id, post_restore_hook=["false"])
    assert info.value.error_class == "HookFailed" and "the restored tree was killed" in info.value.message
    wait_for(lambda: gone(pid), 10, "the restored tree to be killed")


def test_hook_arguments_are_validated(client: SnapdClient) -> None:
    with pytest.raises(SnapdClientError) as info:
        client.checkpoint(1, pre_checkpoint_hook=["x"] * 65)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "pre_checkpoint_hook" in info.value.message
    with pytest.raises(SnapdClientError) as info:
        client.restore("x", gpu_uuid_map={"GPU-1": "nope"})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not a GPU UUID" in info.value.message
