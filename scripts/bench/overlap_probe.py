"""Overlap probe (issue #25 goal 3): does cuCheckpointProcessRestore read the
host copy of VRAM through the process's page tables, in an order and at a
pace that lets snapd inject that copy while the driver already restores it?

A torch child holds ``--blocks`` GPU blocks of known contents. Each
experiment: lock + checkpoint the child, find the host copy (mappings that
appeared or grew), read it out, find every chunk of every block in it, change
it (or not), restore + unlock, and let the child check every chunk on the GPU.
One JSON line per step on stdout, a JSON summary last; the child is always
thawed and killed. See docs/overlap-probe.md.

Run (root, GPU host): PYTHONPATH=daemon /opt/torch/.venv/bin/python3 scripts/bench/overlap_probe.py
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overlap_mem as mem  # noqa: E402  (the probe's own helpers, beside it)
from snapd_daemon.host import cuda  # noqa: E402

CHILD = r"""
import json, os, sys, time, torch
blocks_n, block_bytes, chunk_bytes = map(int, sys.argv[1:4])
sys.path.insert(0, sys.argv[4])
import overlap_mem as mem
seed = mem.seed
n, per = block_bytes // 8, chunk_bytes // 8
base = torch.arange(n, dtype=torch.int64, device="cuda") * mem.MULT
blocks = [torch.empty(n, dtype=torch.int64, device="cuda") for _ in range(blocks_n)]
def fill():
    for i, b in enumerate(blocks):
        torch.bitwise_xor(base, seed(i), out=b)
    torch.cuda.synchronize()
def check():
    wrong, zero = [], 0
    for i, b in enumerate(blocks):
        rows = b.view(-1, per)
        idx = torch.nonzero((rows != torch.bitwise_xor(base, seed(i)).view(-1, per)).any(dim=1)).flatten()
        if idx.numel():
            zero += int((rows[idx] == 0).all(dim=1).sum())
            wrong.extend((i * (n // per) + idx).tolist())
    torch.cuda.synchronize()
    return wrong, zero
def say(**kw):
    print(json.dumps(kw), flush=True)
fill()
say(ready=True, pid=os.getpid(), device=torch.cuda.get_device_name(), allocated=torch.cuda.memory_allocated(),
    reserved=torch.cuda.memory_reserved())
for line in sys.stdin:
    t = time.monotonic()
    if line.strip() == "check":
        wrong, zero = check()
        say(wrong=wrong, zero=zero, check_s=round(time.monotonic() - t, 3))
    elif line.strip() == "fill":
        fill()
        say(filled=True)
    elif line.startswith("drop "):
        say(error=mem.drop([tuple(map(int, part.split(":"))) for part in line.split()[1:]]))
    else:
        break
"""


# Parts the located host copy is cut into to show where wrong chunks lie.
BINS = 20


class ProbeError(Exception):
    """A step of the probe failed; the message names the step."""


class Report:
    """Collects results and errors; prints each as one JSON line as it comes."""

    def __init__(self) -> None:
        self.summary: dict[str, object] = {"probe": "overlap", "experiments": {}, "errors": []}
        self.t0 = time.monotonic()

    def emit(self, **fields: object) -> None:
        print(json.dumps({"t": round(time.monotonic() - self.t0, 3), **fields}), flush=True)

    def result(self, name: str, value: dict[str, object]) -> None:
        self.summary["experiments"][name] = value  # type: ignore[index]
        self.emit(result=name, **value)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run a step; an exception is recorded as {"step", "error"} and re-raised as ProbeError."""
        self.emit(step=name)
        try:
            yield
        except Exception as exc:
            error = {"step": name, "error": f"{type(exc).__name__}: {exc}"}
            self.summary["errors"].append(error)  # type: ignore[union-attr]
            self.emit(**error)
            raise ProbeError(f"step {name!r} failed: {exc}") from exc


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the probe dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM (a timeout) ends the probe like Ctrl-C: the child is still thawed and killed."""
    raise KeyboardInterrupt(f"signal {signum}")


class Child:
    """The torch child: known GPU blocks, commands on stdin, JSON answers on stdout."""

    def __init__(self, python: str, blocks: int, block_bytes: int, chunk_bytes: int, timeout: float) -> None:
        here = Path(__file__).resolve().parent
        path = os.pathsep.join(filter(None, [str(here.parents[1] / "daemon"), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([python, "-c", CHILD, str(blocks), str(block_bytes), str(chunk_bytes), str(here)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": path}, preexec_fn=_die_with_parent)
        try:
            self.ready = self._answer(timeout)
        except BaseException:
            self.kill()
            raise
        self.pid = int(self.ready["pid"])

    def _answer(self, timeout: float) -> dict[str, object]:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise ProbeError(f"child {self.proc.pid} gave no answer in {timeout:.0f} s")
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise ProbeError(f"child {self.proc.pid} exited (code {self.proc.wait()}); see its stderr above")
            if line.startswith("{"):
                return json.loads(line)
            print(f"child: {line.rstrip()}", file=sys.stderr)

    def ask(self, command: str, timeout: float = 60) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of pid, keyed 'tid:name'."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="utf-8") as f:
                text = f.read()
            name = text[text.index("(") + 1: text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            out[f"{tid}:{name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, object]:
    deltas = {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}
    busiest = sorted(deltas.items(), key=lambda kv: -kv[1])[:3]
    return {"total_s": round(sum(deltas.values()), 3), "busiest_threads": busiest}


class Probe:
    def __init__(self, args: argparse.Namespace, report: Report, child: Child) -> None:
        self.args, self.report, self.child, self.pid = args, report, child, child.pid
        self.block_bytes, self.chunk_bytes = args.block_mib << 20, args.chunk_kib << 10
        self.chunks_total = args.blocks * (self.block_bytes // self.chunk_bytes)
        self.buf: bytearray | None = None
        self.runs: list[mem.Run] = []
        self.host_copy: list[tuple[int, int]] = []

    def freeze(self, name: str) -> dict[str, object]:
        """lock + checkpoint, then find the host copy, read it out and locate the blocks in it."""
        a = self.args
        with self.report.step(f"{name}: lock+checkpoint"):
            before = mem.read_regions(self.pid)
            t = time.monotonic()
            cuda.lock(self.pid, a.lock_timeout_ms)
            cuda.checkpoint(self.pid)
            frozen_s = time.monotonic() - t
            after = mem.read_regions(self.pid)
        with self.report.step(f"{name}: find host copy"):
            grown = mem.grown_ranges(before, after, a.min_region_kib << 10)
            # A driver that keeps its host copy mapped (and resident) across a restore
            # shows no growth at the next checkpoint: look where it was last time too.
            earlier = mem.still_mapped(self.host_copy, after)
            ranges = mem.merge(grown + earlier)
            if not ranges:
                old = {(r.start, r.end, r.perms, r.path) for r in before}
                new = sorted((r for r in after if (r.start, r.end, r.perms, r.path) not in old), key=lambda r: -r.size)
                raise ProbeError("no resident anonymous read-write mapping appeared or grew at checkpoint; changed: "
                                 + (", ".join(f"{r.start:#x}+{r.size} {r.perms} {r.path or '(anon)'} rss {r.rss}"
                                              for r in new[:8]) or "nothing"))
            total, limit = sum(e - s for s, e in ranges), a.max_read_gib << 30
            if total > limit:
                raise ProbeError(f"the grown mappings hold {total} bytes, over --max-read-gib {a.max_read_gib}: "
                                 + ", ".join(f"{s:#x}+{e - s}" for s, e in ranges[:8]))
            t = time.monotonic()
            self.buf = mem.read_ranges(self.pid, ranges, a.threads, self.buf)
            read_s = time.monotonic() - t
            t = time.monotonic()
            self.runs = mem.locate(self.buf, ranges, a.blocks, self.block_bytes, self.chunk_bytes)
        located = sum(len(r.chunks) for r in self.runs)
        if located:
            self.host_copy = mem.merge([(r.address, r.address + r.length) for r in self.runs])
        payload = "located chunks"
        if not located:
            # The blocks are not there as written: clear the largest grown range instead.
            offsets = itertools.accumulate((e - s for s, e in ranges), initial=0)
            start, end, offset = max(((s, e, o) for (s, e), o in zip(ranges, offsets)), key=lambda r: r[1] - r[0])
            self.runs = [mem.Run(start, end - start, offset, ())]
            payload = "largest grown range (no known chunk found in the host copy)"
        info = {"lock_checkpoint_s": round(frozen_s, 3), "read_s": round(read_s, 3),
                "locate_s": round(time.monotonic() - t, 3),
                "regions": [{"start": hex(s), "bytes": e - s} for s, e in ranges[:16]],
                "region_count": len(ranges), "host_copy_bytes": sum(e - s for s, e in ranges),
                "grown_bytes": sum(e - s for s, e in grown), "earlier_ranges_still_mapped": len(earlier),
                "gpu_bytes": self.child.ready["reserved"], "block_bytes_total": a.blocks * self.block_bytes,
                "chunks_located": located, "chunks_total": self.chunks_total, "runs": len(self.runs),
                "payload": payload, "payload_bytes": sum(r.length for r in self.runs),
                "rss_before": sum(r.rss for r in before), "rss_after": sum(r.rss for r in after)}
        self.report.emit(frozen=name, **info)
        return info

    def clear(self, name: str, how: str, fallback: bool = False) -> str:
        """Empty the payload: "zero" writes zeros into its pages, "drop" has the
        child discard them (MADV_DONTNEED), as CRIU leaves a region it restores
        without pages. A drop that fails zeroes instead if ``fallback``. Returns
        what was done ("zero", "drop", or "zero (drop failed: …)")."""
        with self.report.step(f"{name}: {how}"):
            if how == "drop":
                answer = self.child.ask("drop " + " ".join(f"{r.address}:{r.length}" for r in self.runs))
                if not answer.get("error"):
                    return "drop"
                if not fallback:
                    raise ProbeError(f"the child could not drop the host copy: {answer['error']}")
                how = f"zero (drop failed: {answer['error']})"
            mem.zero_runs(self.pid, self.runs, self.args.threads)
            return how

    def restore(self, name: str) -> dict[str, object]:
        with self.report.step(f"{name}: restore"):
            cpu = thread_cpu(self.pid)
            t = time.monotonic()
            cuda.restore(self.pid)
            restore_s = time.monotonic() - t
            cpu = cpu_delta(cpu, thread_cpu(self.pid))
        return {"restore_s": round(restore_s, 3), "target_cpu": cpu}

    def unlock_and_check(self, name: str) -> dict[str, object]:
        with self.report.step(f"{name}: unlock+check"):
            cuda.unlock(self.pid)
            answer = self.child.ask("check")
            wrong = answer["wrong"]
            assert isinstance(wrong, list)
            where = mem.wrong_positions(self.runs, wrong, self.block_bytes // self.chunk_bytes, BINS)
            if wrong:
                self.child.ask("fill")
        return {"wrong_chunks": len(wrong), "zero_chunks": answer["zero"], "check_s": answer["check_s"], **where}

    def control(self) -> dict[str, object]:
        return {**self.freeze("control"), **self.restore("control"), **self.unlock_and_check("control")}

    def cleared(self, name: str, how: str) -> dict[str, object]:
        info = self.freeze(name)
        done = self.clear(name, how)
        return {**info, "clear": done, **self.restore(name), **self.unlock_and_check(name)}

    def watermark(self, name: str, fraction: float, rate: float) -> dict[str, object]:
        info = self.freeze(name)
        assert self.buf is not None
        done = self.clear(name, self.args.clear, fallback=True)
        writer = mem.PacedWriter(self.pid, self.buf, self.runs, self.args.threads, self.args.piece_kib << 10, rate)
        with self.report.step(f"{name}: refill to watermark"):
            writer.start()
            while writer.watermark() < fraction * writer.total and not writer.errors:
                time.sleep(0.0005)
            if writer.errors:
                raise ProbeError(writer.errors[0])
        at_start = writer.watermark() / writer.total
        restored = self.restore(name)
        at_end = writer.watermark() / writer.total
        writer.join()
        # A writer still busy when the restore returns may find the host copy gone
        # (the driver frees it): that is a finding, not a failure of the probe.
        late = {"writer_error_after_restore": writer.errors[0]} if writer.errors else {}
        fill_s = writer.finished - writer.started if writer.finished else None
        return {**info, **restored, "clear": done, "fraction": fraction, "rate_limit_gbps": rate / 1e9,
                "writer_gbps": round(writer.total / fill_s / 1e9, 2) if fill_s else None,
                "fill_s": round(fill_s, 3) if fill_s else None, "watermark_at_restore_start": round(at_start, 4),
                "watermark_at_restore_end": round(at_end, 4), **late, **self.unlock_and_check(name)}

    def idle(self) -> dict[str, object]:
        reason = mem.idle_tracking_unavailable()
        if reason:
            return {"skipped": reason}
        info = self.freeze("idle")
        pages = [r.address + k for r in sorted(self.runs, key=lambda r: r.address) for k in range(0, r.length, mem.PAGE)]
        sample = pages[:: max(1, len(pages) // self.args.idle_pages)]
        frames = mem.pfns(self.pid, sample)
        present = frames != 0
        if not present.any():
            return {**info, "skipped": "pagemap shows no present page frame (PFNs need root)"}
        tracker = mem.IdleTracker(frames[present])
        timeline = []
        try:
            with self.report.step("idle: mark"):
                tracker.mark_idle()
                baseline = float(tracker.accessed().mean())
            done: dict[str, object] = {}
            thread = threading.Thread(target=lambda: done.update(self.restore("idle")))
            t = time.monotonic()
            thread.start()
            while True:
                alive = thread.is_alive()
                used = tracker.accessed()
                hit = used.nonzero()[0]
                timeline.append({"t": round(time.monotonic() - t, 3), "accessed": round(float(used.mean()), 4),
                                 "lowest": round(hit[0] / len(used), 4) if len(hit) else None,
                                 "highest": round(hit[-1] / len(used), 4) if len(hit) else None,
                                 "prefix": round(int(used.argmin()) / len(used), 4) if not used.all() else 1.0})
                if not alive:
                    break
                time.sleep(self.args.idle_interval_ms / 1000)
            thread.join()
        finally:
            tracker.close()
        if "restore_s" not in done:
            raise ProbeError("idle: restore failed (see its step error)")
        return {**info, **done, "pages_sampled": int(present.sum()), "accessed_before": baseline,
                "timeline": timeline, **self.unlock_and_check("idle")}


def verdict(experiments: dict[str, dict[str, object]]) -> dict[str, object]:
    """What the results mean for overlapping snapd's injection with the driver's restore."""
    zeroed, dropped = (experiments.get(k, {}).get("wrong_chunks") for k in ("zeroed", "dropped"))
    if zeroed is None and dropped is None:
        return {"reads_page_tables": None, "meaning": "neither the zeroed nor the dropped experiment completed"}
    if dropped is None:
        return {"reads_page_tables": bool(zeroed), "zeroed_wrong": zeroed, "dropped_wrong": None,
                "meaning": "only the zeroed experiment completed: " + (
                    "the driver restores from the process's pages, but whether it looks them up at restore time "
                    "(needed for a CRIU-restored process) is untested" if zeroed else
                    "zeroing the host copy changed nothing: the driver restores from a copy of its own")}
    if not zeroed and not dropped:
        return {"reads_page_tables": False,
                "meaning": "neither zeroing nor dropping the host copy changed the restored blocks: the driver "
                           "restores from a copy of its own, so filling the process's memory during the restore "
                           "is moot"}
    if not dropped:
        return {"reads_page_tables": False, "zeroed_wrong": zeroed, "dropped_wrong": dropped,
                "meaning": "writes into the host copy's pages are seen but dropping them is not: the driver reads "
                           "the physical pages it pinned at checkpoint, not the page tables at restore; this probe "
                           "cannot tell what it does with a CRIU-restored process (new pages)"}
    marks = {k: v.get("wrong_chunks") for k, v in experiments.items() if k.startswith(("watermark", "paced"))}
    safe = sorted(v["fraction"] for k, v in experiments.items()  # type: ignore[type-var]
                  if k.startswith("watermark") and v.get("wrong_chunks") == 0)
    return {"reads_page_tables": True, "zeroed_wrong": zeroed, "dropped_wrong": dropped,
            "wrong_chunks_by_experiment": marks, "lowest_safe_fraction": safe[0] if safe else None,
            "meaning": "the driver reads the host copy through the page tables at restore time (dropped pages "
                       "come back as zeros); a writer ahead of it works from the lowest safe watermark fraction "
                       "on (None: no watermark start was safe)"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=64, help="GPU blocks (default 64)")
    p.add_argument("--block-mib", type=int, default=64, help="MiB per block (default 64: 4 GiB in all)")
    p.add_argument("--chunk-kib", type=int, default=64, help="granularity of locating and checking (default 64)")
    p.add_argument("--fractions", default="0,0.25,0.5", help="watermark fractions to start the restore at")
    p.add_argument("--pace-gbps", type=float, default=2.0, help="rate of the paced writer, 0 skips it (default 2)")
    p.add_argument("--clear", choices=("drop", "zero"), default="drop",
                   help="how watermark/paced runs empty the host copy first (default drop: pages not present)")
    p.add_argument("--threads", type=int, default=8, help="reader/writer threads (default 8)")
    p.add_argument("--piece-kib", type=int, default=4096, help="writer piece size (default 4096)")
    p.add_argument("--min-region-kib", type=int, default=1024, help="ignore grown ranges smaller (default 1024)")
    p.add_argument("--max-read-gib", type=int, default=16, help="refuse to read more host copy (default 16)")
    p.add_argument("--idle-pages", type=int, default=16384, help="pages sampled for idle tracking")
    p.add_argument("--idle-interval-ms", type=float, default=20)
    p.add_argument("--lock-timeout-ms", type=int, default=30000)
    p.add_argument("--budget-s", type=float, default=150, help="skip experiments not started by then")
    p.add_argument("--python", default=sys.executable, help="python with torch for the child")
    args = p.parse_args(argv)
    if (args.block_mib << 20) % (args.chunk_kib << 10) or (args.chunk_kib << 10) % mem.PAGE:
        p.error("--chunk-kib must divide --block-mib and be a multiple of 4")
    if not 0 < args.blocks <= 1024:
        p.error("--blocks must be 1..1024")
    args.fraction_list = [float(f) for f in args.fractions.split(",") if f.strip()]
    return args


def run(args: argparse.Namespace, report: Report) -> None:
    report.summary["args"] = {k: v for k, v in vars(args).items() if k != "fraction_list"}
    report.summary["userfaultfd"] = mem.userfaultfd_report()
    with report.step("driver"):
        report.summary["driver_api"] = cuda.driver_version()
    with report.step("start child"):
        child = Child(args.python, args.blocks, args.block_mib << 20, args.chunk_kib << 10, timeout=120)
    report.summary["child"] = child.ready
    report.emit(child=child.ready)
    probe = Probe(args, report, child)
    plan = [("control", probe.control), ("zeroed", lambda: probe.cleared("zeroed", "zero")),
            ("dropped", lambda: probe.cleared("dropped", "drop"))]
    plan += [(f"watermark_{f}", lambda f=f: probe.watermark(f"watermark_{f}", f, 0.0)) for f in args.fraction_list]
    if args.pace_gbps > 0:
        plan.append((f"paced_{args.pace_gbps}gbps", lambda: probe.watermark("paced", 0.0, args.pace_gbps * 1e9)))
    plan.append(("idle", probe.idle))
    try:
        for name, experiment in plan:
            if time.monotonic() - report.t0 > args.budget_s:
                report.result(name, {"skipped": f"time budget of {args.budget_s:.0f} s spent"})
                continue
            try:
                report.result(name, experiment())
            except ProbeError as exc:
                report.result(name, {"failed": str(exc)})
                try:
                    with report.step(f"{name}: thaw + refill after failure"):
                        cuda.thaw(child.pid)
                        child.ask("fill")
                except ProbeError:
                    break
                if name == "control":
                    break
    finally:
        with contextlib.suppress(ProbeError), report.step("final thaw"):
            cuda.thaw(child.pid)
        with contextlib.suppress(ProbeError), report.step("final state"):
            final = cuda.state(child.pid)
            report.summary["final_state"] = final.name.lower() if final is not None else "no CUDA state"
        child.kill()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = Report()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(args, report)
    except (ProbeError, KeyboardInterrupt) as exc:
        report.summary["errors"].append({"step": "probe", "error": f"{type(exc).__name__}: {exc}"})  # type: ignore[union-attr]
    report.summary["verdict"] = verdict(report.summary["experiments"])  # type: ignore[arg-type]
    report.summary["wall_s"] = round(time.monotonic() - report.t0, 3)
    print(json.dumps({"summary": report.summary}), flush=True)
    return 1 if report.summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
