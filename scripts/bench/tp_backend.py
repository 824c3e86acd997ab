"""Tensor-parallel mode of the reference server: one rank process per GPU, talking NCCL.

``reference_server.py --tensor-parallel N`` starts N rank processes (spawned, so no
CUDA state is inherited), rank r on cuda:r. Each holds the model; the output
projection is vocabulary-parallel, as Megatron-LM splits it: rank r computes the
logits of its slice of the vocabulary, and every greedy step all-gathers each
rank's best (logit, token id) over NCCL, so every token crosses the
communicator. The HTTP front-end holds no CUDA state; it sends each request to
every rank over a pipe and answers with rank 0's tokens (all ranks agree).

Checkpointing: the CUDA driver cannot checkpoint NCCL communicators, so the
ranks run with NCCL_RAS_ENABLE=0 (NCCL's RAS thread would keep TCP connections
between the ranks for the life of the processes, communicators or not) and the
server has two hook endpoints:
  POST /pre-checkpoint  every rank calls dist.destroy_process_group() (the
                        communicators, their proxy threads, sockets and shared
                        memory are gone); /generate answers 503 until
  POST /post-restore    every rank builds a new process group (NCCL) from a fresh
                        file rendezvous and checks it with an all-reduce.
`reference_server.py hook --port P pre-checkpoint|post-restore` calls them, as
snapd's pre-checkpoint and post-restore hooks.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import torch

READY_POLL_SECONDS = 1.0


class NcclDown(Exception):
    """The communicators are torn down (between /pre-checkpoint and /post-restore)."""


def _rendezvous() -> str:
    """A fresh file:// rendezvous (unique per build: restored copies never share one)."""
    return f"file://{tempfile.mkdtemp(prefix='tp-rdzv-')}/store"


def _build_group(rank: int, world: int, init_method: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world,
                            device_id=torch.device(f"cuda:{rank}"))
    check = torch.ones(1, device=f"cuda:{rank}")
    dist.all_reduce(check)
    torch.cuda.synchronize()
    if int(check.item()) != world:
        raise RuntimeError(f"all_reduce over {world} ranks gave {check.item()}")


class _Rank:
    """One rank: the model on cuda:RANK and its vocabulary slice of the output projection."""

    def __init__(self, rank: int, world: int, options: Any) -> None:
        import torch

        import reference_server as server

        server.DEVICE = f"cuda:{rank}"
        torch.cuda.set_device(rank)
        self.rank, self.world, self.device = rank, world, server.DEVICE
        self.model = server.load_model(options.weights_dir)
        vocab = self.model.lm_head.weight.shape[0]
        per = -(-vocab // world)
        self.offset = rank * per
        self.head = self.model.lm_head.weight[self.offset : min(vocab, self.offset + per)]

    def _next(self, hidden: torch.Tensor) -> torch.Tensor:
        """The greedy next token over the whole vocabulary, agreed by all ranks."""
        import torch
        import torch.distributed as dist

        logits = (hidden @ self.head.T).float()[0]
        best = int(logits.argmax())
        mine = torch.tensor([float(logits[best]), float(best + self.offset)], device=self.device)
        every = torch.empty(2 * self.world, device=self.device)
        dist.all_gather_into_tensor(every, mine)
        pairs = every.view(self.world, 2).tolist()
        top = max(v for v, _ in pairs)
        token = min(int(i) for v, i in pairs if v == top)  # ties: the lowest id, as argmax picks
        return torch.tensor([[token]], device=self.device)

    def greedy(self, tokens: list[int], max_new_tokens: int) -> list[int]:
        import torch

        with torch.inference_mode():
            out = self.model.model(input_ids=torch.tensor([tokens], device=self.device), use_cache=True)
            following = self._next(out.last_hidden_state[:, -1, :])
            generated = [int(following)]
            for _ in range(max_new_tokens - 1):
                out = self.model.model(input_ids=following, past_key_values=out.past_key_values, use_cache=True)
                following = self._next(out.last_hidden_state[:, -1, :])
                generated.append(int(following))
            return generated


def rank_main(conn: Connection, rank: int, world: int, options: Any, init_method: str) -> None:
    """Rank process: load, join the group, report ready; then serve commands from the
    front-end: ("generate", tokens, n), ("teardown",), ("rebuild", init_method)."""
    import torch.distributed as dist

    os.environ["NCCL_RAS_ENABLE"] = "0"  # read by NCCL at its first communicator, below
    try:
        engine = _Rank(rank, world, options)
        _build_group(rank, world, init_method)
        engine.greedy([1, 2, 3], 2)  # warm-up through the collectives
    except Exception as exc:
        conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    conn.send(("ready", {"pid": os.getpid()}))
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        try:
            if command[0] == "generate":
                conn.send(("ok", engine.greedy(command[1], command[2])))
            elif command[0] == "teardown":
                dist.destroy_process_group()
                conn.send(("ok", None))
            else:
                _build_group(rank, world, command[1])
                conn.send(("ok", None))
        except Exception as exc:
            conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))


class TensorParallelBackend:
    """The front-end's side: ``world`` rank processes and a pipe to each."""

    def __init__(self, options: Any, world: int, error: type[Exception]) -> None:
        if not (Path(options.weights_dir) / "config.json").exists():
            raise error(f"{options.weights_dir}: no model; run once with --prepare-only first "
                        "(tensor-parallel ranks only load it)")
        context = multiprocessing.get_context("spawn")
        self.error = error
        self.conns: list[Connection] = []
        self.processes = []
        self.init_method = init_method = _rendezvous()  # kept while the group lives (its file store)
        for rank in range(world):
            conn, child = context.Pipe()
            proc = context.Process(target=rank_main, args=(child, rank, world, options, init_method),
                                   name=f"tp-rank-{rank}", daemon=True)
            proc.start()
            child.close()
            self.conns.append(conn)
            self.processes.append(proc)
        infos = self._all(None, "start")
        self.rank_pids = [cast(int, info["pid"]) for info in infos]
        self.engine_pid: int | None = self.rank_pids[0]
        self.timings: dict[str, float] = {}
        self.nccl_live = True

    def _all(self, command: tuple[Any, ...] | None, what: str) -> list[Any]:
        """Send ``command`` to every rank (None: just wait) and collect each answer."""
        if command is not None:
            for conn in self.conns:
                conn.send(command)
        answers = []
        for rank, (conn, proc) in enumerate(zip(self.conns, self.processes, strict=True)):
            while not conn.poll(READY_POLL_SECONDS):
                if not proc.is_alive():
                    raise self.error(f"rank {rank} exited with code {proc.exitcode} during {what}")
            kind, payload = conn.recv()
            if kind == "error":
                raise self.error(f"{what}: {payload}")
            answers.append(payload)
        return answers

    def generate(self, tokens: list[int], max_new_tokens: int) -> dict[str, Any]:
        if not self.nccl_live:
            raise NcclDown("the NCCL communicators are torn down (pre-checkpoint); POST /post-restore first")
        answers = self._all(("generate", tokens, max_new_tokens), "generate")
        if any(a != answers[0] for a in answers):
            raise self.error(f"ranks disagree: {answers}")
        return {"tokens": answers[0], "graph_checksum": None, "ranks": len(answers)}

    def teardown(self) -> dict[str, Any]:
        if self.nccl_live:
            self._all(("teardown",), "teardown")
            self.nccl_live = False
            _drop(self.init_method)
        return {"nccl": False, "rank_pids": self.rank_pids}

    def rebuild(self) -> dict[str, Any]:
        if not self.nccl_live:
            self.init_method = _rendezvous()
            self._all(("rebuild", self.init_method), "rebuild")
            self.nccl_live = True
        return {"nccl": True, "rank_pids": self.rank_pids}

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)


def _drop(init_method: str) -> None:
    shutil.rmtree(Path(init_method.removeprefix("file://")).parent, ignore_errors=True)
