"""Instances: the process trees successful restores made, kept by the daemon from the
moment CRIU creates them until well after they end.

States and the only transitions allowed (``_NEXT``)::

    starting -> running | ready | exited      (CRIU made the tree; the restore goes on)
    running  -> ready | exited | stopped      (the restore returned)
    ready    -> exited | stopped              (its snapshot's readiness probe passed)
    exited, stopped                           (final: ended on its own or killed / by StopInstance)

An instance is ready (``ready`` time, ``ready_seconds`` from its restore's start) when
its restore returns, unless its snapshot records a readiness probe: then when the probe
passes, ``starting -> ready`` in a restore that waits for it, ``running -> ready`` for
one that returned at running and left the daemon probing (restore/readiness.py).

A restore that fails after CRIU kills its tree: its instance goes from
``starting`` to ``exited`` with the restore's error in ``detail``. An instance
ends when its root process ends; the root's exit status is kept when the
daemon reaped it (host/reaper.py: the daemon is the child subreaper of what it
restores), and unknown when it could not (not its child).

Each record is one file, ``<state dir>/instances/<id>.json``, replaced whole by
a rename (``write_atomic``, not fsynced, as the hold journal: it describes live
processes, which a reboot ends). At start (``load``, after the hold journal's
recovery) a live record whose root still runs with its recorded start time is
re-adopted (its end is watched again; its status will be unknown: the daemon
that restored it was its parent, not this one); one whose root has gone is
marked ``exited`` with an unknown status; one left ``starting`` (its restore
was cut off; the journal's recovery killed its tree) and one of an earlier boot
are marked ``exited`` too. Ended records are pruned beyond ``keep_exited`` and
after ``max_age`` seconds.

An instance restored into a sandbox (``restore --into``, host/sandbox.py) keeps the
sandbox's pid, start time and cgroup. Its tree lives only as long as the sandbox:
when the sandbox's process ends (the pod was deleted), also while no daemon ran,
the daemon SIGKILLs the tree (``exited``, the reason in ``detail``). Its end (a failed restore's too)
removes the group made below the sandbox's cgroup, once the instance reads ended, outside the lock.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from snapd_daemon import metrics
from snapd_daemon.errors import InstanceAmbiguous, InstanceNotFound
from snapd_daemon.host import nvml, sandbox
from snapd_daemon.host.processes import is_process
from snapd_daemon.host.reaper import UNKNOWN, ExitCallback, ExitStatus, Reaper
from snapd_daemon.runtime.events import EventBus
from snapd_daemon.runtime.holds import boot_id
from snapd_daemon.util.fsutil import write_atomic
from snapd_daemon.util.prefixes import AmbiguousPrefix, by_prefix

log = structlog.get_logger()


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RUNNING = "running"
    EXITED = "exited"
    STOPPED = "stopped"


LIVE = frozenset({State.STARTING, State.READY, State.RUNNING})
_NEXT = {
    State.STARTING: {State.RUNNING, State.READY, State.EXITED},
    State.RUNNING: {State.READY, State.EXITED, State.STOPPED},
    State.READY: {State.EXITED, State.STOPPED},
    State.EXITED: set(),
    State.STOPPED: set(),
}


def new_instance_id() -> str:
    return "in-" + secrets.token_hex(6)


@dataclass
class Instance:
    id: str
    snapshot_id: str
    snapshot_name: str
    operation_id: str
    root_pid: int
    # (host pid, start time) of every process of the tree as restored, root first
    processes: list[tuple[int, float]]
    state: State = State.STARTING
    gpus: list[str] = field(default_factory=list)
    cgroup: str = ""
    log_path: str = ""
    # port inside the tree's network namespace -> host address it is published on
    published: dict[int, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    # when it became ready (0: not yet; see the module docstring), and when it ended
    ready: float = 0.0
    # seconds from its restore's start to ready (from its creation, when a restarted daemon probed it)
    ready_seconds: float = 0.0
    ended: float = 0.0
    exit: ExitStatus | None = None
    detail: str = ""
    boot: str = field(default_factory=boot_id)
    # restored into a sandbox (host/sandbox.py): its pid, that pid's start time, and its cgroup
    # (0, 0.0, ""); ``cgroup`` is then the group made below it, removed when the instance ends
    sandbox_pid: int = 0
    sandbox_started: float = 0.0
    sandbox_cgroup: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def root(self) -> tuple[int, float]:
        return self.processes[0]

    def to_json(self) -> bytes:
        data = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, text: str) -> Instance:
        data = json.loads(text)
        data["state"] = State(data["state"])
        data["processes"] = [(int(p), float(t)) for p, t in data["processes"]]
        data["published"] = {int(p): str(a) for p, a in data["published"].items()}
        data["exit"] = ExitStatus(**data["exit"]) if data["exit"] else None
        return cls(**data)


# pid -> GPU UUID -> bytes of GPU memory it holds there
GpuMemory = dict[int, dict[str, int]]


class InstanceTable:
    """The daemon's instances, in memory and on disk; thread-safe. Every state change is
    written, published on ``events`` (a copy of the record as it is after it) and counted."""

    def __init__(self, directory: Path, reaper: Reaper, events: EventBus, keep_exited: int,
                 max_age: float) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.reaper = reaper
        self.events = events
        self.keep_exited = keep_exited
        self.max_age = max_age
        self._lock = threading.RLock()
        self._final = threading.Condition(self._lock)  # notified when an instance ends
        self._all: dict[str, Instance] = {}
        # instances a StopInstance is ending: they end as stopped, not exited
        self._stopping: set[str] = set()
        # operation id of a restore into a sandbox -> ((its pid, start time, cgroup), the group made below it)
        self._placing: dict[str, tuple[tuple[int, float, str], str]] = {}

    # -- start ----------------------------------------------------------------

    def load(self) -> None:
        """Read every record; re-adopt live trees, mark those that ended meanwhile (see the
        module docstring). Run once at start, after the hold journal's recovery."""
        booted = boot_id()
        groups: list[str] = []
        with self._lock:
            for path in sorted(self.directory.glob("in-*.json")):
                try:
                    inst = Instance.from_json(path.read_text())
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.error("instances.unreadable_record", path=str(path), error=str(exc))
                    continue
                self._all[inst.id] = inst
                if not inst.live:
                    continue
                if inst.boot != booted:
                    groups.append(self._end(inst, UNKNOWN, "the host rebooted while it ran"))
                elif inst.state is State.STARTING:
                    groups.append(self._end(inst, UNKNOWN,
                                            "its restore was cut off by a daemon restart (the tree was killed)"))
                elif is_process(*inst.root) and self.reaper.watch(*inst.root, self._root_ended(inst.id)):
                    log.info("instance.readopted", instance=inst.id, root_pid=inst.root_pid, state=inst.state.value)
                    self._watch_sandbox(inst)
                else:
                    groups.append(self._end(inst, UNKNOWN, "its root ended while no daemon ran"))
            self._prune()
            self._count()
        self._release(groups)

    # -- a restore's steps ----------------------------------------------------

    @contextlib.contextmanager
    def placing(self, operation_id: str, box: tuple[int, float, str], cgroup: str) -> Iterator[None]:
        """For the block: restore ``operation_id`` goes into sandbox ``box`` (pid, start time, cgroup), in
        the group ``cgroup`` made below its cgroup; the instance it creates records both from its creation."""
        with self._lock:
            self._placing[operation_id] = (box, cgroup)
        try:
            yield
        finally:
            with self._lock:
                del self._placing[operation_id]

    def create(self, operation_id: str, snapshot_id: str, snapshot_name: str,
               processes: list[tuple[int, float]]) -> Instance:
        """A new instance in ``starting`` for the tree CRIU has just made (``processes``, root
        first); its root's end is watched from now on; its sandbox and group, if ``placing`` says."""
        inst = Instance(id=new_instance_id(), snapshot_id=snapshot_id, snapshot_name=snapshot_name,
                        operation_id=operation_id, root_pid=processes[0][0], processes=processes)
        with self._lock:
            if operation_id in self._placing:
                box, inst.cgroup = self._placing[operation_id]
                inst.sandbox_pid, inst.sandbox_started, inst.sandbox_cgroup = box
            self._all[inst.id] = inst
            self._changed(inst)
        if not self.reaper.watch(*inst.root, self._root_ended(inst.id)):
            self._root_ended(inst.id)(inst.root_pid, UNKNOWN)
        log.info("instance.created", instance=inst.id, operation=operation_id, root_pid=inst.root_pid)
        return inst

    def running(self, instance_id: str, *, ready_seconds: float | None, probed: bool, gpus: list[str], cgroup: str,
                log_path: str, published: dict[int, str], sandbox: tuple[int, float, str] | None = None) -> Instance:
        """The restore returned: the instance runs (unless its tree ended meanwhile), ready
        ``ready_seconds`` after the restore's start: ``ready`` when its probe passed (``probed``),
        else ``running`` and ready as it runs; ``ready_seconds`` None: its probe runs on (``ready``).
        ``sandbox``: (pid, start time, cgroup) of the sandbox it went into, whose end from now on
        ends the tree."""
        with self._lock:
            inst = self._all[instance_id]
            inst.gpus, inst.cgroup, inst.log_path, inst.published = gpus, cgroup, log_path, published
            inst.sandbox_pid, inst.sandbox_started, inst.sandbox_cgroup = sandbox or (0, 0.0, "")
            if not inst.live:  # its end removed its group (recorded at its creation)
                self._changed(inst)
                return copy.deepcopy(inst)
            if ready_seconds is not None:
                self._mark_ready(inst, ready_seconds)
            self._move(inst, State.READY if probed and ready_seconds is not None else State.RUNNING)
            found = copy.deepcopy(inst)
        self._watch_sandbox(found)
        return found

    def ready(self, instance_id: str, seconds: float) -> bool:
        """Its probe, run in the background, passed ``seconds`` after the restore's start:
        ``running -> ready``. False when it is no longer running (ended meanwhile)."""
        with self._lock:
            inst = self._all.get(instance_id)
            if inst is None or inst.state is not State.RUNNING:
                return False
            self._mark_ready(inst, seconds)
            self._move(inst, State.READY)
            return True

    def not_ready(self, instance_id: str, why: str) -> None:
        """Its probe, run in the background, never passed: it stays running, saying so in ``detail``."""
        with self._lock:
            inst = self._all.get(instance_id)
            if inst is not None and inst.state is State.RUNNING:
                inst.detail = why
                self._changed(inst)

    @staticmethod
    def _mark_ready(inst: Instance, seconds: float) -> None:
        inst.ready, inst.ready_seconds = time.time(), round(seconds, 3)
        metrics.RESTORE_TO_READY.observe(seconds)

    def restore_failed(self, instance_id: str, why: str) -> None:
        """The restore failed after CRIU made the tree, which it kills: say so in ``detail``."""
        with self._lock:
            inst = self._all[instance_id]
            inst.detail = f"its restore failed: {why}"
            self._write(inst)

    # -- ends -----------------------------------------------------------------

    def _root_ended(self, instance_id: str) -> ExitCallback:
        def ended(pid: int, status: ExitStatus) -> None:
            group = ""
            with self._lock:
                inst = self._all.get(instance_id)
                if inst is not None and inst.live:
                    group = self._end(inst, status, "")
                    log.info("instance.ended", instance=instance_id, root_pid=pid, state=inst.state.value,
                             status=status.describe())
                    self._prune()
            self._release([group])
        return ended

    def _end(self, inst: Instance, status: ExitStatus, detail: str) -> str:
        """End ``inst``; returns the group to ``_release`` once the lock is released ("": none)."""
        stopped = inst.id in self._stopping and inst.state is not State.STARTING
        inst.exit, inst.ended = status, time.time()
        inst.detail = inst.detail or detail
        self._move(inst, State.STOPPED if stopped else State.EXITED)
        return inst.cgroup if inst.sandbox_pid else ""

    def _watch_sandbox(self, inst: Instance) -> None:
        """Kill the tree of a live instance in a sandbox once the sandbox's process ends (now, when it has)."""
        if inst.live and inst.sandbox_pid and not self.reaper.watch(inst.sandbox_pid, inst.sandbox_started,
                                                                     self._sandbox_ended(inst.id)):
            self._sandbox_ended(inst.id)(inst.sandbox_pid, UNKNOWN)

    def _sandbox_ended(self, instance_id: str) -> ExitCallback:
        def ended(pid: int, _status: ExitStatus) -> None:
            with self._lock:
                inst = self._all.get(instance_id)
                if inst is None or not inst.live:
                    return
                inst.detail = f"its sandbox (pid {pid}) ended, and the daemon killed its tree"
                self._write(inst)
                root = inst.root
            log.warning("instance.sandbox_ended", instance=instance_id, sandbox_pid=pid, root_pid=root[0])
            sandbox.kill_root(*root)
        return ended

    @staticmethod
    def _release(groups: list[str]) -> None:
        """Remove the groups of ended instances below their sandboxes' (waiting): never under the lock."""
        for group in filter(None, groups):
            sandbox.remove_group(group)

    def stopping(self, instance_id: str) -> None:
        """A StopInstance ends this instance: once its root ends it is ``stopped``."""
        with self._lock:
            self._stopping.add(instance_id)

    def wait_ended(self, instance_id: str, timeout: float) -> bool:
        """Wait until the instance has ended (its root's end handled); False at ``timeout``."""
        with self._lock:
            return self._final.wait_for(lambda: not self._all[instance_id].live, timeout)

    # -- finding --------------------------------------------------------------

    def get(self, ref: str) -> Instance:
        """A copy of the instance whose id is ``ref`` or starts with it."""
        with self._lock:
            self._prune()
            try:
                found = by_prefix(ref, list(self._all))
            except AmbiguousPrefix as many:
                raise InstanceAmbiguous(ref=ref, count=many.count, candidates=many.candidates) from None
            if found is None:
                raise InstanceNotFound(instance=ref)
            return copy.deepcopy(self._all[found])

    def list(self, everything: bool = False) -> list[Instance]:
        """Copies of the live instances (``everything``: the ended ones kept too), oldest first."""
        with self._lock:
            self._prune()
            found = [copy.deepcopy(i) for i in self._all.values() if everything or i.live]
        return sorted(found, key=lambda i: (i.created, i.id))

    def state_of(self, instance_id: str) -> State | None:
        """Its state now (None: not kept)."""
        with self._lock:
            inst = self._all.get(instance_id)
            return None if inst is None else inst.state

    def live_of(self, snapshot_id: str) -> list[Instance]:
        return [i for i in self.list() if i.snapshot_id == snapshot_id]

    # -- keeping --------------------------------------------------------------

    def _move(self, inst: Instance, state: State) -> None:
        if state not in _NEXT[inst.state]:
            raise ValueError(f"instance {inst.id}: no transition {inst.state.value} -> {state.value}")
        inst.state = state
        if state not in LIVE:
            self._stopping.discard(inst.id)
            self._final.notify_all()
        self._changed(inst)

    def _changed(self, inst: Instance) -> None:
        self._write(inst)
        self.events.publish(copy.deepcopy(inst))
        self._count()

    def _write(self, inst: Instance) -> None:
        write_atomic(self.directory / f"{inst.id}.json", inst.to_json(), durable=False)

    def _count(self) -> None:
        counts = {state: 0 for state in State}
        for inst in self._all.values():
            counts[inst.state] += 1
        for state, n in counts.items():
            metrics.INSTANCES.labels(state.value).set(n)

    def _prune(self) -> None:
        """Forget ended instances older than ``max_age`` and beyond the newest ``keep_exited``."""
        with self._lock:
            ended = sorted((i for i in self._all.values() if not i.live), key=lambda i: i.ended, reverse=True)
            oldest = time.time() - self.max_age
            gone = [i for n, i in enumerate(ended) if n >= self.keep_exited or i.ended < oldest]
            for inst in gone:
                del self._all[inst.id]
                (self.directory / f"{inst.id}.json").unlink(missing_ok=True)
            if gone:
                log.info("instances.pruned", instances=[i.id for i in gone])
                self._count()


def gpu_memory(instances: list[Instance]) -> GpuMemory:
    """For the processes of the live ``instances`` on GPUs: the GPU memory each holds on each
    GPU, as NVML lists it now (empty without GPUs or NVML)."""
    pids = {pid for i in instances if i.live and i.gpus for pid, _ in i.processes}
    if not pids:
        return {}
    held: GpuMemory = {}
    for device in nvml.read().devices:
        for pid, used in device.compute.items():
            if pid in pids:
                held.setdefault(pid, {})[device.uuid] = used
    return held
