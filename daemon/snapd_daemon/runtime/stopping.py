"""StopInstance: SIGTERM to an instance's whole tree, SIGKILL after a grace, until every pid is
gone; for an instance on GPUs, until NVML lists none of its processes any more.

The tree is what the instance's record names (pid and start time: never a
process that took a pid since) and every process below its root now (children
the server started after the restore). Ends are waited for on pidfds; the
daemon's own children are reaped at once by the reaper (host/reaper.py), so
their pids are free when this returns; a tree re-adopted after a daemon
restart is reaped by its parent (init), which this waits for too.
"""

from __future__ import annotations

import signal
import time

import psutil
import structlog

from snapd_daemon.errors import InstanceStarting, InstanceStopFailed
from snapd_daemon.host import nvml
from snapd_daemon.host.processes import PidState, is_process, wait_for_state
from snapd_daemon.host.reaper import wait_ended
from snapd_daemon.runtime.instances import Instance, InstanceTable, State

log = structlog.get_logger()
DEFAULT_GRACE = 10.0
# after SIGKILL: for the kernel to end the processes, their parent to reap them, the driver to free GPU memory
_KILL_SECONDS = 30.0
_REAP_SECONDS = 10.0
_GPU_RELEASE_SECONDS = 10.0
_GPU_POLL = 0.1


def tree_of(inst: Instance) -> list[tuple[int, float]]:
    """(pid, start time) of the instance's live processes: those recorded, and all below its root."""
    members = {pid: started for pid, started in inst.processes if is_process(pid, started)}
    if inst.root_pid in members:
        try:
            for proc in psutil.Process(inst.root_pid).children(recursive=True):
                members.setdefault(proc.pid, proc.create_time())
        except psutil.NoSuchProcess:
            pass
    return sorted(members.items())


def _send(members: list[tuple[int, float]], sig: signal.Signals) -> None:
    for pid, started in members:
        if is_process(pid, started):
            try:
                psutil.Process(pid).send_signal(sig)
            except psutil.NoSuchProcess:
                pass


def stop_instance(table: InstanceTable, ref: str, grace: float = DEFAULT_GRACE) -> Instance:
    """Stop the instance ``ref`` names (see the module docstring); the instance as it is then."""
    inst = table.get(ref)
    if inst.state is State.STARTING:
        raise InstanceStarting(instance=inst.id, operation_id=inst.operation_id)
    members = tree_of(inst)
    if not members:
        return inst
    if inst.live:
        table.stopping(inst.id)
    pids = [pid for pid, _ in members]
    log.info("instance.stopping", instance=inst.id, pids=pids, grace=grace)
    _send(members, signal.SIGTERM)
    left = wait_ended(members, grace)
    if left:
        log.info("instance.killing", instance=inst.id, pids=left)
        _send(members, signal.SIGKILL)
        left = wait_ended(members, _KILL_SECONDS)
    if left:
        raise InstanceStopFailed(instance=inst.id, reason=f"pid(s) {left} still run {_KILL_SECONDS:.0f} s after "
                                 "SIGKILL (stuck in the kernel: see their /proc/PID/stack)")
    held = wait_for_state(pids, {PidState.FREE}, _REAP_SECONDS)
    if held:
        raise InstanceStopFailed(instance=inst.id, reason=f"pid(s) {held} ended but were not reaped within "
                                 f"{_REAP_SECONDS:.0f} s (zombies of a parent that does not wait for them)")
    if inst.live and not table.wait_ended(inst.id, _REAP_SECONDS):
        raise InstanceStopFailed(instance=inst.id, reason="its root ended but its end was not seen")
    if inst.gpus:
        _await_gpu_release(inst, set(pids))
    stopped = table.get(inst.id)
    log.info("instance.stopped", instance=inst.id, state=stopped.state.value)
    return stopped


def _await_gpu_release(inst: Instance, pids: set[int]) -> None:
    """Wait until NVML lists none of ``pids`` on any GPU; InstanceStopFailed naming who holds
    what after ``_GPU_RELEASE_SECONDS``."""
    deadline = time.monotonic() + _GPU_RELEASE_SECONDS
    while True:
        view = nvml.read()
        held = {(pid, d.uuid): used for d in view.devices for pid, used in d.compute.items() if pid in pids}
        if not held and not view.error:
            return
        if time.monotonic() >= deadline:
            what = "; ".join(f"pid {pid} holds {used} bytes on {uuid}" for (pid, uuid), used in sorted(held.items()))
            raise InstanceStopFailed(instance=inst.id, reason="its processes ended but GPU memory is not freed: "
                                     + (what or f"NVML cannot tell ({view.error})"))
        time.sleep(_GPU_POLL)
