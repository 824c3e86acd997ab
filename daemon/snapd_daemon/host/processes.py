"""Process trees: what a checkpoint takes, what it must refuse, and signalling.

Pids are checked against their start time before every signal, so a pid that
was recycled since it was inspected is never touched. A tree is read as it is
at that moment: zombies are members (CRIU dumps and restores them), children
that exit and are reaped while it is read are not, and the root must be alive.
Everything a restore could never bring back is refused here, before anything
is frozen.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from dataclasses import dataclass, field

import psutil

from snapd_daemon.errors import InvalidRequest, ProcessNotFound, ProcessProtected
from snapd_daemon.host import namespaces, terminals

_PF_KTHREAD = 0x00200000
_PF_EXITING = 0x00000004
MAX_PID = 4194304  # PID_MAX_LIMIT on 64-bit Linux
# two start times of one process, read from /proc at different moments, differ by less
START_SLACK = 0.01


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    ppid: int
    name: str
    cmdline: tuple[str, ...]
    threads: int
    rss_bytes: int
    create_time: float
    # stopped (SIGSTOP, state T) when inspected: a restore leaves it stopped
    stopped: bool = False

    def matches_live(self) -> bool:
        """True if this pid still names the same process (not a recycled pid)."""
        try:
            return abs(psutil.Process(self.pid).create_time() - self.create_time) < 0.01
        except psutil.Error:
            return False


@dataclass(frozen=True)
class ProcessTree:
    root: int
    processes: tuple[ProcessRecord, ...]
    # CRIU's shell_job: the tree's session (or process group) leader is outside the tree
    external_session: bool
    # root is the init of a pid namespace of its own: host pid -> pid inside it ({} otherwise)
    ns_pids: dict[int, int] = field(default_factory=dict)
    # root has a mount namespace of its own (rooted at the host's /, as `snapd run` makes it)
    own_mntns: bool = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    @property
    def rss_bytes(self) -> int:
        return sum(p.rss_bytes for p in self.processes)


def validate_pid(pid: int) -> None:
    if pid <= 0 or pid > MAX_PID:
        raise InvalidRequest(field="pid", reason=f"{pid} is not a process id (1..{MAX_PID})")


def stat_fields(pid: int | str) -> list[bytes]:
    """The fields of /proc/PID/stat (or, for "PID/task/TID", a thread's) after the
    parenthesised comm: state ppid pgrp session tty_nr tpgid flags ... (FileNotFoundError
    once the pid is free)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def _is_kernel_thread(pid: int) -> bool:
    return bool(int(stat_fields(pid)[6]) & _PF_KTHREAD)


def _cmdline(proc: psutil.Process) -> tuple[str, ...]:
    try:
        return tuple(proc.cmdline())
    except psutil.ZombieProcess:  # a zombie has no memory to read its arguments from
        return ()


def _record(proc: psutil.Process) -> ProcessRecord:
    with proc.oneshot():
        return ProcessRecord(
            pid=proc.pid,
            ppid=proc.ppid(),
            name=proc.name(),
            cmdline=_cmdline(proc),
            threads=proc.num_threads(),
            rss_bytes=proc.memory_info().rss,
            create_time=proc.create_time(),
            stopped=proc.status() == psutil.STATUS_STOPPED,
        )


def _session_id(pid: int) -> int | None:
    """pid's session id as its pid namespace sees it; None if it has exited."""
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def inspect_tree(pid: int, daemon_pid: int | None = None) -> ProcessTree:
    """Describe the tree rooted at ``pid``, refusing what must never be checkpointed.

    Refuses (with the reason in the error) pid 1, kernel threads, the daemon
    itself and any of its ancestors, a tree that contains the daemon, a
    process in another pid namespace than the root's, a root in a pid namespace
    of its own that is not its init, a process whose session leader lives
    in an ancestor pid namespace (CRIU cannot dump a session id that reads 0),
    and a process with a controlling terminal the tree does not own (see
    ``_check_terminals``).
    """
    validate_pid(pid)
    daemon_pid = daemon_pid or os.getpid()
    try:
        root = psutil.Process(pid)
        name = root.name()
        if pid == 1:
            raise ProcessProtected(pid=pid, name=name, reason="it is the init process of this pid namespace")
        if _is_kernel_thread(pid):
            raise ProcessProtected(pid=pid, name=name, reason="it is a kernel thread")
        if pid == daemon_pid:
            raise ProcessProtected(pid=pid, name=name, reason="it is the snapd daemon itself")
        ancestors = {p.pid for p in psutil.Process(daemon_pid).parents()}
        if pid in ancestors:
            raise ProcessProtected(pid=pid, name=name, reason=f"it is an ancestor of the snapd daemon (pid {daemon_pid})")
        own_ns = _tree_namespace(pid, name, daemon_pid)
        records = tuple(r for member in [root, *root.children(recursive=True)]
                        if (r := _member(member, pid, name, own_ns)) is not None)
    except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessNotFound(pid=pid) from exc
    pids = {r.pid for r in records}
    if daemon_pid in pids:
        raise ProcessProtected(pid=pid, name=name, reason=f"its tree contains the snapd daemon (pid {daemon_pid})")
    _check_terminals(pid, name, sorted(pids))
    try:
        external = os.getsid(pid) not in pids or os.getpgid(pid) not in pids
    except ProcessLookupError as exc:
        raise ProcessNotFound(pid=pid) from exc
    orphaned = [p for p in sorted(pids) if _session_id(p) == 0]
    if orphaned:
        raise ProcessProtected(
            pid=pid, name=name,
            reason=f"pid {orphaned[0]} of its tree belongs to a session whose leader lives outside this pid "
                   "namespace (its session id reads 0), which CRIU cannot dump; start the workload in its own "
                   "session (setsid, or as a systemd service)",
        )
    own = not namespaces.same_namespace("pid", pid, daemon_pid)
    if own and external:
        raise ProcessProtected(
            pid=pid, name=name,
            reason=f"pid {pid} of its tree is the init of a pid namespace of its own, but its session or process "
                   "group leader is outside that namespace, which CRIU cannot dump; start it with `snapd run` "
                   "(whose init leads its own session)",
        )
    return ProcessTree(root=pid, processes=records, external_session=external,
                       ns_pids=namespaces.pids_inside(pid, sorted(pids)) if own else {},
                       own_mntns=_own_mount_namespace(pid, name, daemon_pid))


def _check_terminals(root: int, name: str, pids: list[int]) -> None:
    """Refuse a tree with a controlling terminal it does not own: one that is no pty, whose
    master or slave end no process of the tree holds open, or whose session leader is outside
    the tree. CRIU restores a pty only by making both ends anew (a restore has no terminal of
    its own to hand over), and the controlling terminal only to its session leader."""
    ends: terminals.PtyEnds | None = None
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if not int(fields[4]):
            continue
        terminal = terminals.Terminal(int(fields[4]))
        ends = ends or terminals.pty_ends(pids)
        session = int(fields[3])
        if session not in pids or not ends.owns(terminal):
            where = ("its session leader is outside the tree" if session not in pids
                     else "its other end (the pty master) is held outside the tree"
                     if terminal.pts_index is not None else "it is no pseudo-terminal")
            raise ProcessProtected(
                pid=root, name=name,
                reason=f"pid {pid} of its tree has a controlling terminal ({terminal.name}) that the tree does not "
                       f"own ({where}), which a restore can never give back (CRIU: \"Don't have tty to inherit "
                       "session from\"), so the process would be lost; start the workload without one: `setsid -f "
                       "CMD </dev/null >LOG 2>&1`, `systemd-run --unit NAME CMD`, or a service unit (`nohup CMD &` "
                       "alone keeps the terminal). A tree whose session leader opened the pty itself (both ends "
                       "inside the tree) is checkpointed",
            )


def _own_mount_namespace(pid: int, name: str, daemon_pid: int) -> bool:
    """Whether ``pid`` has a mount namespace other than the daemon's; refuses one whose
    root directory is not the daemon's (a container's own root filesystem), which a
    restore could not give back."""
    if namespaces.same_namespace("mnt", pid, daemon_pid):
        return False
    root, host = os.stat(f"/proc/{pid}/root"), os.stat(f"/proc/{daemon_pid}/root")
    if (root.st_dev, root.st_ino) != (host.st_dev, host.st_ino):
        raise ProcessProtected(
            pid=pid, name=name,
            reason="it has a mount namespace of its own whose root is not the host's / (a container's root "
                   "filesystem?); snapd restores a mount namespace only over the host's /, as `snapd run` makes it",
        )
    return True


def _tree_namespace(pid: int, name: str, daemon_pid: int) -> str:
    """The pid namespace the tree must live in: the daemon's, or one of its own whose
    init is ``pid`` (nested directly below the daemon's)."""
    own_ns = os.readlink(f"/proc/{daemon_pid}/ns/pid")
    if namespaces.same_namespace("pid", pid, daemon_pid):
        return own_ns
    chain = namespaces.ns_pids(pid)
    if chain[-1] != 1 or len(chain) != len(namespaces.ns_pids(daemon_pid)) + 1:
        init = namespaces.namespace_init(pid)
        raise ProcessProtected(
            pid=pid, name=name,
            reason="it lives in a pid namespace of its own but is not its init; checkpoint the namespace's init"
                   + (f", pid {init}" if init else "") + " (`snapd run` prints it), so that CRIU dumps the whole "
                   "namespace and every restore gets a fresh one",
        )
    return os.readlink(f"/proc/{pid}/ns/pid")


def _member(proc: psutil.Process, root: int, name: str, own_ns: str) -> ProcessRecord | None:
    """``proc``'s record, or None when it is a child that exited and was reaped while
    the tree was read; refuses a member a restore could not bring back."""
    try:
        fields = stat_fields(proc.pid)
        zombie = fields[0] in (b"Z", b"X")
        if zombie and proc.pid == root:
            raise ProcessLookupError(proc.pid)
        # a zombie has left its namespaces (the link reads ENOENT); it dies where its parent lives
        if not zombie and os.readlink(f"/proc/{proc.pid}/ns/pid") != own_ns:
            raise ProcessProtected(
                pid=root, name=name,
                reason=f"pid {proc.pid} of its tree lives in another pid namespace than its root (CRIU "
                       "dumps one pid namespace, the root's); start it without a namespace of its own",
            )
        return _record(proc)
    except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
        if proc.pid == root:
            raise
        return None


def signal_tree(tree: ProcessTree, sig: signal.Signals) -> list[int]:
    """Send ``sig`` to every still-live member of ``tree``; return the pids signalled."""
    sent = []
    for rec in tree.processes:
        if rec.matches_live():
            try:
                os.kill(rec.pid, sig)
                sent.append(rec.pid)
            except ProcessLookupError:
                pass
    return sent


def start_time(pid: int) -> float | None:
    """Start time of live ``pid`` (None if gone or a zombie)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.NoSuchProcess:
        return None


def is_process(pid: int, started: float) -> bool:
    """Whether live ``pid`` is the process that started at ``started`` (not one that took the pid since)."""
    now = start_time(pid)
    return now is not None and abs(now - started) < START_SLACK


class PidState(enum.Enum):
    FREE = "free"  # no process holds the pid
    EXITING = "exiting"  # a zombie, or a process tearing down (PF_EXITING)
    ALIVE = "alive"


def pid_state(pid: int) -> PidState:
    try:
        fields = stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return PidState.FREE
    if fields[0] in (b"Z", b"X") or int(fields[6]) & _PF_EXITING or _kill_pending(pid):
        return PidState.EXITING
    return PidState.ALIVE


def _kill_pending(pid: int) -> bool:
    """A SIGKILL is queued for ``pid`` that it has not acted on yet: it exits as soon as it
    runs (a scheduler that kills a server and at once restores its snapshot must see it
    leaving, not alive, even before the CPU gets to it)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    pending = 0
    for line in status.splitlines():
        if line.startswith((b"SigPnd:", b"ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return bool(pending & 1 << (signal.SIGKILL - 1))


def wait_for_state(pids: list[int], done: set[PidState], timeout: float) -> list[int]:
    """Poll until every pid is in one of ``done``; return the pids that never got there."""
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while True:
        pending = [p for p in pending if pid_state(p) not in done]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.02)


def comm(pid: int) -> str:
    """The process's short name, or "?" if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def parent_of(pid: int) -> str:
    """The parent pid as text, or "?" if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(ln.split()[1] for ln in f if ln.startswith("PPid:"))
    except (OSError, StopIteration):
        return "?"
