"""Post-copy restore: the cut-out memory is filled through userfaultfd while the tree runs.

CRIU restores with ``lazy_pages`` (criu/lazy.py): every private anonymous mapping
of each restored task is registered with a userfaultfd that CRIU hands to snapd,
so a page not yet filled blocks the thread touching it until snapd fills it.
The tree can then be resumed, and its CUDA restore started, right after CRIU
returns, while the cut-out regions are filled; every byte any thread reads
is still one ``Delivery`` verified first (its batched read and BLAKE3 check;
``PostCopy`` is only its writer and its order).

- Start: before CRIU runs, whose restorer touches the tree's memory after sending the
  uffds (the kernel reads each thread's rseq area, glibc's, at the top of its cut-out
  stack), so faults are served from then on. Until CRIU has returned (``received``) only
  batches faults ask for are taken, and a part of one CRIU has not made ready (no uffd
  yet; ENOENT: ranges not registered yet, as the root's are only once every other task
  has restored) is left for after: such a wait would hold the faulting task, and CRIU.
- Order: address order, from a cursor that a fault moves to the batch holding the
  faulting address (``FillPlan``), so a reader walking the memory is followed by
  every fill thread. Zero chunks of the plan are filled with UFFDIO_ZEROPAGE.
- Faults (one thread polls every uffd): in a planned piece still to fill, the
  cursor moves there and its COPY answers the fault; in a filled one, WAKE; outside
  the plan (a hole), the zero page (up to the next planned bytes, or the end of its 2 MiB).
- Events: per address space (``AddressSpace``, addrspace.py) an ``AddressMap`` of its
  planned memory follows munmap / madvise / mremap and translates each piece at fill
  time (what the process dropped stays dropped) and each fault back to its piece.
  FORK: the child's uffd gets the parent's map and batches still to fill (the child
  has every page filled before it) and every later one. Reading messages (and so
  changing maps and mms) holds ``lock`` exclusive; a fill holds it shared from checking
  that its batch is wanted to marking it filled, so no COPY lands where an event took
  memory away.
  A COPY refused with EAGAIN or ENOENT (an event not yet read; the kernel checks the
  range before the pending event) drops the lock and goes on from where it stopped once
  an event has changed the map (InjectFailed when none comes within ``UNEXPLAINED_SECONDS``;
  before CRIU returned, ENOENT leaves the rest for after, see Start); ESRCH: the process is gone.
- The end: the fill thread closes the uffds the moment every batch is in every address
  space (a uffd closed earlier would turn every missing page into zeros; from then on a
  missing page is a hole, and the kernel's zero page serves it with no daemon in the way,
  also to a kernel reader that cannot wait on a uffd, GUP without FAULT_FLAG_ALLOW_RETRY);
  ``wait`` waits for that. When the fill fails, its ``abort`` kills the tree (or CRIU) first,
  then it closes them, and each uffd CRIU sends after: no fault of CRIU's restorer waits for
  a fill that is over (the restore fails: a tree not yet resumed never is). ``close`` (the
  undo's, after its kill) ends the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import select
import threading
import time
from collections.abc import Callable

import structlog

from snapd_daemon.errors import InjectFailed, RestoreAborted
from snapd_daemon.host import uffd
from snapd_daemon.restore.addrspace import AddressSpace
from snapd_daemon.restore.delivery import Delivery, Progress, Readahead, Route
from snapd_daemon.restore.fillfigures import FillFigures
from snapd_daemon.restore.fillplan import FillPlan
from snapd_daemon.store.rwlock import RWLock

log = structlog.get_logger()
_ARRIVAL_PAUSE = 0.001  # while CRIU restores, a fill thread with nothing it may take waits this long
_RETRY_PAUSE = 0.0002  # a fill refused with EAGAIN or ENOENT waits this long for the event to be read
UNEXPLAINED_SECONDS = 10.0  # a refusal with no event read and no progress made for this long fails the restore


class _Stopped(Exception):
    """The fill was stopped by ``close`` (the restore failed elsewhere)."""


class _Pending(Exception):
    """A COPY met an event not yet read (EAGAIN; ENOENT: the range left before its event
    came): drop the lock, then go on, translating anew."""

    def __init__(self, mm: AddressSpace, error: uffd.FillError) -> None:
        super().__init__(str(error))
        self.mm, self.error = mm, error


class PostCopy:
    """The post-copy fill of one restore: ``start`` and ``receive`` (criu/lazy.py's callback)
    from before CRIU runs, ``received`` once it returned, ``wait`` for the end; ``close`` always."""

    zero_pages = True

    def __init__(self, snapshot_id: str, overlaps: bool = True) -> None:
        self.snapshot_id, self.overlaps = snapshot_id, overlaps  # overlaps: the tree resumes during the fill
        self.lock = RWLock()
        self.mms: dict[int, list[AddressSpace]] = {}
        self.hosts: dict[int, int] = {}
        self.plan: FillPlan | None = None
        self.failure: BaseException | None = None
        self.figures = FillFigures()
        self._arrived_lock = threading.Lock()
        self._arrived: list[AddressSpace] = []
        self._closing = False
        self._shut = False  # every uffd closed, and each one that comes later at once
        self.muted = True  # the fill reports no progress (another phase is current: CRIU's, the GPU's)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._faults = threading.Thread(target=contextvars.copy_context().run, args=(self._serve,),
                                        name="postcopy-faults", daemon=True)
        self._faults.start()
        self._fill: threading.Thread | None = None
        self._expected: set[int] = set()
        self._open = False  # CRIU has returned: every batch may be taken (``take`` in ``order``)

    # -- CRIU's side --------------------------------------------------------

    def receive(self, pid: int, fd: int) -> None:
        """Take ``fd``, the uffd of the task CRIU restores as image pid ``pid``."""
        with self._arrived_lock:
            if not self._shut:
                self._arrived.append(AddressSpace(fd, pid, forked=False))
                os.write(self._wake_w, b"m")
                return
        os.close(fd)  # the fill has ended (failed while CRIU restores): its pages come as zeros

    # -- the fill -----------------------------------------------------------

    def start(self, delivery: Delivery, routes: list[Route], progress: Progress, check: Callable[[], None],
              ahead: Readahead | None, abort: Callable[[], object]) -> None:
        """Fill ``routes`` (memory targets naming image pids) in a thread of its own, started
        before CRIU runs (see Start above); ``abort`` runs in that thread when the fill fails
        (not when ``close`` stopped it)."""

        def fill() -> None:
            try:
                delivery.run(routes, lambda done: None if self.muted else progress(done), lambda: self._check(check),
                             ahead, probe=False, writer=self)
                self.figures.ended = time.monotonic()
                self._release()
            except BaseException as exc:
                self.failure = self.failure or exc
                if not isinstance(exc, _Stopped):
                    try:
                        abort()
                    finally:  # no fault waits for a fill that is over (CRIU's restorer meets them):
                        self._closing = True  # the tree was killed, or is never resumed
                        self._stop_faults()
            self.figures.ended = self.figures.ended or time.monotonic()

        self._expected = {t.pid for r in routes for t in r.targets if t.pid}
        self._fill = threading.Thread(target=contextvars.copy_context().run, args=(fill,), name="postcopy-fill",
                                      daemon=True)
        self._fill.start()

    def received(self, hosts: dict[int, int]) -> None:
        """Once CRIU returned: every batch may be taken, progress is reported, ``hosts`` (image
        pid -> host pid) names tasks in messages; RestoreAborted for a task with no uffd, or
        the fill's failure."""
        while True:
            with self.lock.shared():  # every uffd adopted (``_adopt`` holds it exclusive) before batches are open
                with self._arrived_lock:
                    if not self._arrived:
                        self.hosts, self.muted, self._open, received = hosts, False, True, set(self.mms)
                        break
            self._wait_for_criu()
        self.figures.began = time.monotonic()  # time and rate from here (the few faulted pages before count in)
        if self.failure is not None and not isinstance(self.failure, _Stopped):
            raise self.failure
        if missing := sorted(self._expected - received):
            raise RestoreAborted(snapshot_id=self.snapshot_id,
                                 reason=f"CRIU sent no userfaultfd for pid {hosts.get(missing[0], missing[0])}")

    def order(self, batches: list[list[Route]], stop: threading.Event) -> Callable[[], int]:
        with self.lock.exclusive():
            plan = self.plan = FillPlan(batches)
            self.figures.planned_bytes = sum(t.length for batch in batches for r in batch for t in r.targets if t.pid)
            for mms in self.mms.values():
                for mm in mms:
                    mm.planned(plan)

        def take() -> int:  # until CRIU has returned, only a batch a fault asked for
            while not self._open:
                if (i := plan.sought()) is not None or stop.is_set():  # stop: another thread failed
                    return len(plan.taken) if i is None else i
                self._wait_for_criu()
            return plan.next()

        return take

    def write(self, index: int, memory: dict[int, list[tuple[int, memoryview | int]]]) -> None:
        later = False  # a part of it CRIU has not made ready: taken again once CRIU has returned
        for pid, pieces in memory.items():
            progress = {id(mm): mm.partial.pop(index) for mm in self.mms.get(pid, ()) if index in mm.partial}
            stalled: dict[int, tuple[float, object]] = {}  # id(mm) -> since when refused, and where it stood
            while True:
                pending: _Pending | None = None
                with self.lock.shared():
                    targets = [mm for mm in self.mms.get(pid, ()) if index in mm.wanted and not mm.gone]
                    later |= pid not in self.mms and not self._open  # its uffd not come yet
                    if not targets:
                        break
                    for mm in targets:
                        try:
                            self._fill_mm(mm, pieces, progress)
                        except _Pending as exc:
                            pending = exc
                            continue
                        mm.wanted.discard(index)
                if pending is not None:
                    if pending.error.errno == errno.ENOENT and not self._open:  # its ranges not registered yet
                        later, pending.mm.partial[index] = True, progress[id(pending.mm)]
                        break
                    self.figures.count(f"retries_{errno.errorcode[pending.error.errno].lower()}")
                    mm, key = pending.mm, id(pending.mm)
                    if stalled.get(key, (0, None))[1] != (now := (mm.messages, progress[key])):
                        stalled[key] = (time.monotonic(), now)  # an event came or the fill got further
                    self._wait_for_event(pending, stalled[key][0])
        if later and self.plan is not None:
            self.plan.untake(index)

    def _wait_for_criu(self) -> None:
        """Pause while CRIU restores (raising as ``_check`` does)."""
        self._check()
        time.sleep(_ARRIVAL_PAUSE)

    def _wait_for_event(self, pending: _Pending, since: float) -> None:
        """Pause while the fault thread reads the event a refused COPY met; InjectFailed when the
        refusals of an address space have met no event (forks too) and no progress for
        ``UNEXPLAINED_SECONDS`` (ENOENT: a range never registered; EAGAIN: an event never sent)."""
        self._check()
        if time.monotonic() - since > UNEXPLAINED_SECONDS:
            mm, exc = pending.mm, pending.error
            raise InjectFailed(pid=self.hosts.get(mm.pid, mm.pid), address=f"{exc.address:#x}", length=0,
                               reason=f"{exc.strerror or exc} for {UNEXPLAINED_SECONDS:g} s with no event to "
                               "explain it", snapshot_id=self.snapshot_id)
        time.sleep(_RETRY_PAUSE)

    def _fill_mm(self, mm: AddressSpace, pieces: list[tuple[int, memoryview | int]], progress: dict[int, tuple[int, int]]) -> None:
        first, offset = progress.get(id(mm), (0, 0))
        for k in range(first, len(pieces)):
            address, data = pieces[k]
            length = data if isinstance(data, int) else len(data)
            pos = offset if k == first else 0
            for dst, n, at in mm.addresses.forward(address + pos, length - pos):
                try:
                    mm.copy(dst, data, pos + at, n, self.figures.filled)
                except uffd.FillError as exc:
                    if exc.errno in (errno.EAGAIN, errno.ENOENT):  # go on from there once the event is read
                        progress[id(mm)] = (k, pos + at + exc.address - dst)
                        raise _Pending(mm, exc) from exc
                    raise InjectFailed(pid=self.hosts.get(mm.pid, mm.pid), address=f"{exc.address:#x}",
                                       length=dst + n - exc.address, reason=exc.strerror or str(exc),
                                       snapshot_id=self.snapshot_id) from exc
                if mm.gone:
                    return

    def _check(self, check: Callable[[], None] = lambda: None) -> None:
        """Raise the failure of another part of the fill (the fault thread's: the fill then
        aborts), or _Stopped once ``close`` stopped it; then run ``check`` (the restore's)."""
        if self.failure is not None:
            raise self.failure
        if self._closing:
            raise _Stopped
        check()

    def wait(self) -> None:
        """Wait for the fill to end (its thread closes the uffds when it is whole); raises the
        fill's failure."""
        if self._fill is not None:
            self._fill.join()
        self.close()
        if self.failure is not None:
            raise self.failure

    def _release(self) -> None:
        """The fill's end (its thread): every batch in every address space, so the uffds close
        now (only now may a missing page read as zeros); InjectFailed for any batch left."""
        with self.lock.exclusive():
            self._adopt()
            unfilled = [mm for mms in self.mms.values() for mm in mms if mm.wanted and not mm.gone]
            if unfilled:
                mm = unfilled[0]
                raise InjectFailed(pid=self.hosts.get(mm.pid, mm.pid), address="(several)", length=0,
                                   reason=f"{len(mm.wanted)} batches were never filled", snapshot_id=self.snapshot_id)
            self._closing = True
        log.info("restore.postcopy_filled", seconds=round(self.figures.ended - self.figures.began, 3),
                 **self.figures.progress())  # before the close: it takes each tree's mmap lock
        self._stop_faults()

    def _stop_faults(self) -> None:
        """End the fault thread, then close every uffd, and each one CRIU sends from now on
        (caller: ``_closing`` is set)."""
        os.write(self._wake_w, b"x")
        self._faults.join()
        with self.lock.exclusive():
            with self._arrived_lock:
                self._shut = True
            self._adopt()
            mms, self.mms = [mm for mms in self.mms.values() for mm in mms], {}
            for mm in mms:  # each one once (Linux frees the fd even when close reports an error)
                with contextlib.suppress(OSError):
                    os.close(mm.fd)

    def close(self) -> None:
        """Stop the fill and the fault thread, close every uffd and the pipe; idempotent."""
        if self._closing and self._wake_w < 0:
            return
        self._closing = True
        if self._fill is not None:
            self._fill.join()
        self._stop_faults()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_w = -1

    # -- the fault thread ---------------------------------------------------

    def _adopt(self) -> list[AddressSpace]:
        """Move the uffds received so far into ``mms`` (caller holds ``lock`` exclusive)."""
        with self._arrived_lock:
            arrived, self._arrived = self._arrived, []
        for mm in arrived:
            if self.plan is not None:
                mm.planned(self.plan)
            self.mms.setdefault(mm.pid, []).append(mm)
        return arrived

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd: dict[int, AddressSpace] = {}
        deferred: list[tuple[AddressSpace, int]] = []
        try:
            while not self._closing:
                ready = poller.poll(1 if deferred else None)
                if any(fd == self._wake_r for fd, _ in ready):  # before adopting: a later arrival wakes the next poll
                    os.read(self._wake_r, 4096)
                with self.lock.exclusive():
                    for mm in self._adopt():
                        by_fd[mm.fd] = mm
                        poller.register(mm.fd, select.POLLIN)
                    for fd, events in (r for r in ready if r[0] != self._wake_r):
                        if events & select.POLLIN:
                            for msg in uffd.read(fd):
                                self._message(by_fd[fd], msg, deferred, poller, by_fd)
                        else:  # an mm that is gone
                            poller.unregister(fd)
                    deferred = [(mm, address) for mm, address in deferred if not self._fault(mm, address)]
                    self.figures.deferred = len(deferred)
        except BaseException as exc:
            self.failure = self.failure or exc
            log.error("restore.postcopy_fault_thread_failed", error=str(exc))

    def _message(self, mm: AddressSpace, msg: uffd.Message, deferred: list[tuple[AddressSpace, int]], poller: select.poll,
                 by_fd: dict[int, AddressSpace]) -> None:
        if isinstance(msg, uffd.Pagefault):
            if not self._fault(mm, msg.address):
                deferred.append((mm, msg.address))
            return
        mm.messages += 1
        if isinstance(msg, uffd.Fork):
            child = AddressSpace(msg.fd, mm.pid, forked=True, addresses=mm.addresses.copy(),
                        early=None if mm.early is None else list(mm.early), wanted=set(mm.wanted))
            self.mms.setdefault(mm.pid, []).append(child)
            by_fd[child.fd] = child
            poller.register(child.fd, select.POLLIN)
            self.figures.count("events_fork")
        else:
            mm.change(msg)
            self.figures.count(f"events_{type(msg).__name__.lower()}")

    def _fault(self, mm: AddressSpace, address: int) -> bool:
        """Answer a fault (or move the cursor so that a COPY answers it); False: retry later."""
        if self.plan is None:  # before the fill starts, a planned page may not be told from a hole
            return False
        origin = mm.addresses.back(address)
        batch = self.plan.batch_at(mm.pid, origin) if origin is not None else None
        if batch is not None and batch in mm.wanted:
            if not self._open:  # asked for again until filled: before CRIU returned it may be left for later
                self.plan.want(batch)
                mm.asked.add(address)
                return False
            self.plan.seek(batch)
            mm.asked.discard(address)
            self.figures.count("faults_data")
            return True
        try:
            if batch is None:
                mm.zero_hole(address)
                self.figures.count("faults_zero")
                return True
        except uffd.FillError as exc:
            if exc.errno == errno.EAGAIN:
                return False
            if exc.errno == errno.ESRCH:
                mm.gone = True
                return True
            if exc.errno not in (errno.EEXIST, errno.ENOENT):
                raise
        try:
            uffd.wake(mm.fd, address, uffd.PAGE)
        except uffd.FillError as exc:
            if exc.errno != errno.ESRCH:
                raise
        self.figures.count("faults_data" if address in mm.asked else "faults_wake")  # data: filled meanwhile
        mm.asked.discard(address)
        return True
