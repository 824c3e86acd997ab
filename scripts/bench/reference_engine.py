"""The reference server's engine: the model plus what a vLLM engine keeps beside it (a KV
cache, a CUDA graph, vLLM's sleep mode), run in the server process or in a spawned engine
child, behind the ``Backend`` the HTTP front-end (reference_server.py) calls."""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from reference_model import DEVICE, ServerError, Shape, _log, _timed, load_model, prepare_weights

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    import torch

WARMUP_PROMPT = list(range(1, 17))


# A second prompt length, so that a compiled model has its dynamic shapes before ready.
COMPILE_WARMUP_PROMPT = list(range(1, 8))


WARMUP_NEW_TOKENS = 16


GRAPH_INPUT_ROWS = 64


GRAPH_WEIGHT_ROWS = 1024


FRONTEND_TENSOR_ELEMENTS = 1 << 20


ENGINE_START_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class EngineOptions:
    weights_dir: Path
    shape: Shape
    seed: int
    kv_cache_fraction: float
    cuda_graph: bool
    compile: bool


class Engine:
    """The model plus what a vLLM engine keeps beside it: a KV cache and a CUDA graph.

    Constructing it does everything up to ready: weights, load, optional compile,
    KV cache preallocation, warm-up, graph capture. timings gets PHASE_seconds.
    """

    def __init__(self, options: EngineOptions, timings: dict[str, float]) -> None:
        import torch

        self.options = options
        self.vocab = options.shape.vocab
        self.max_positions = options.shape.max_positions
        with _timed(timings, "weights"):
            generated = prepare_weights(options.weights_dir, options.shape, options.seed)
        _log("weights_ready", weights_dir=str(options.weights_dir), generated=generated)
        with _timed(timings, "load"):
            self.model: Any = load_model(options.weights_dir)
            torch.cuda.synchronize()
        self._forward: Any = torch.compile(self.model) if options.compile else self.model
        # Never read: holding the reservation, as vLLM's KV cache does, is the point.
        self._kv_cache: torch.Tensor | None = None
        self._kv_elements = 0
        self.sleeping = False
        if options.kv_cache_fraction > 0:
            with _timed(timings, "kv_cache"):
                self._kv_cache = self._allocate_kv_cache(options.kv_cache_fraction)
        with _timed(timings, "warmup"):
            self._warm_up()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_output: torch.Tensor | None = None
        if options.cuda_graph:
            with _timed(timings, "cuda_graph"):
                self._capture_graph()

    def _allocate_kv_cache(self, fraction: float) -> torch.Tensor:
        """A zeroed bf16 tensor over fraction of the GPU memory free now, as vLLM reserves."""
        import torch

        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        self._kv_elements = int(free * fraction) // 2
        cache = torch.zeros(self._kv_elements, dtype=torch.bfloat16, device=DEVICE)
        torch.cuda.synchronize()
        _log("kv_cache_allocated", bytes=2 * self._kv_elements, free_before=free, total=total)
        return cache

    def control(self, command: str, level: int = 1) -> dict[str, Any]:
        """vLLM's sleep mode: "sleep" (level 1 gives the KV cache's GPU memory back to
        the driver, so that a checkpoint taken then does not copy it; vLLM's level 1
        also moves the weights to host memory, which a checkpoint does anyway, so here
        they stay), "wake_up" (allocate it again, zeroed) or "is_sleeping"."""
        import torch

        if command == "sleep":
            if level != 1:
                raise ValueError(f"sleep level {level} is not supported here (1: release the KV cache)")
            self._kv_cache = None
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.sleeping = True
        elif command == "wake_up":
            if self._kv_elements and self._kv_cache is None:
                self._kv_cache = torch.zeros(self._kv_elements, dtype=torch.bfloat16, device=DEVICE)
                torch.cuda.synchronize()
            self.sleeping = False
        _log("sleep_mode", command=command, is_sleeping=self.sleeping)
        return {"is_sleeping": self.sleeping, "kv_cache_bytes": 0 if self._kv_cache is None else 2 * self._kv_elements}

    def _warm_up(self) -> None:
        prompts = [WARMUP_PROMPT, COMPILE_WARMUP_PROMPT] if self.options.compile else [WARMUP_PROMPT]
        try:
            for prompt in prompts:
                self._greedy([token % self.vocab for token in prompt], WARMUP_NEW_TOKENS)
        except Exception as exc:
            if self.options.compile:
                raise ServerError(f"torch.compile: the compiled model failed in warm-up: {exc!r}") from exc
            raise

    def _capture_graph(self) -> None:
        """Capture a small fixed matmul on the embedding weights into a torch.cuda.CUDAGraph."""
        import torch

        with torch.no_grad():
            weight = self.model.get_input_embeddings().weight[: min(GRAPH_WEIGHT_ROWS, self.vocab)]
            generator = torch.Generator(device=DEVICE)
            generator.manual_seed(self.options.seed)
            graph_input = torch.randn(
                (GRAPH_INPUT_ROWS, weight.shape[1]), generator=generator, device=DEVICE
            ).to(torch.bfloat16)

            def step() -> torch.Tensor:
                return (graph_input @ weight.T).float().square().mean()

            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_output = step()
        self._graph = graph
        _log("cuda_graph_captured", checksum=self._graph_checksum())

    def _graph_checksum(self) -> float | None:
        """Replay the graph into its zeroed output and return that output, or None without one."""
        if self._graph is None or self._graph_output is None:
            return None
        self._graph_output.zero_()
        self._graph.replay()
        return float(self._graph_output.item())

    def _greedy(self, tokens: list[int], max_new_tokens: int) -> list[int]:
        """max_new_tokens greedy tokens after tokens, with the model's KV cache."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([tokens], dtype=torch.long, device=DEVICE)
            output = self._forward(input_ids=ids, use_cache=True)
            following = output.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            generated = [following]
            for _ in range(max_new_tokens - 1):
                output = self._forward(input_ids=following, past_key_values=output.past_key_values, use_cache=True)
                following = output.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                generated.append(following)
            return cast(list[int], torch.cat(generated, dim=1)[0].tolist())

    def generate(self, tokens: list[int], max_new_tokens: int) -> dict[str, Any]:
        """The /generate answer for validated tokens."""
        if self.sleeping:
            raise ServerError("the engine is sleeping: POST /wake_up first")
        started = time.perf_counter()
        new_tokens = self._greedy(tokens, max_new_tokens)
        checksum = self._graph_checksum()
        return {"tokens": new_tokens, "seconds": round(time.perf_counter() - started, 4), "graph_checksum": checksum}


def _engine_main(conn: Connection, options: EngineOptions) -> None:
    """Engine child: build the Engine, report ("ready", info) or ("error", text), then
    answer (tokens, max_new_tokens) requests with ("ok", answer) or ("error", text)
    until the front-end closes the pipe."""
    timings: dict[str, float] = {}
    try:
        engine = Engine(options, timings)
    except Exception as exc:
        _log("engine_failed", error=repr(exc), traceback=traceback.format_exc())
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"pid": os.getpid(), "timings": timings}))
    while True:
        try:
            command, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", engine.generate(*args) if command == "generate" else engine.control(command, *args)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Backend(Protocol):
    engine_pid: int | None
    timings: dict[str, float]

    def generate(self, tokens: list[int], max_new_tokens: int) -> dict[str, Any]: ...

    def alive(self) -> bool: ...


class LocalBackend:
    """Single-process mode: the HTTP server calls the engine directly."""

    def __init__(self, engine: Engine, timings: dict[str, float]) -> None:
        self.engine = engine
        self.engine_pid: int | None = None
        self.timings = timings

    def generate(self, tokens: list[int], max_new_tokens: int) -> dict[str, Any]:
        return self.engine.generate(tokens, max_new_tokens)

    def control(self, command: str, level: int) -> dict[str, Any]:
        try:
            return self.engine.control(command, level)
        except ValueError as exc:
            raise ServerError(str(exc)) from exc

    def alive(self) -> bool:
        return True


class EngineClient:
    """Engine-process mode: requests go over the pipe to the spawned engine."""

    def __init__(self, conn: Connection, process: BaseProcess, cuda_tensor: torch.Tensor, info: dict[str, Any]) -> None:
        self.conn = conn
        self.process = process
        self.cuda_tensor = cuda_tensor  # keeps the front-end's own CUDA allocation alive
        self.engine_pid: int | None = cast(int, info["pid"])
        self.timings = cast(dict[str, float], info["timings"])

    def generate(self, tokens: list[int], max_new_tokens: int) -> dict[str, Any]:
        return self._call("generate", (tokens, max_new_tokens))

    def control(self, command: str, level: int) -> dict[str, Any]:
        return self._call(command, (level,))

    def _call(self, command: str, args: tuple[Any, ...]) -> dict[str, Any]:
        try:
            self.conn.send((command, args))
            kind, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise ServerError(f"engine process {self.engine_pid} is gone ({exc!r})") from exc
        if kind == "error":
            raise ServerError(f"engine: {payload}")
        return cast(dict[str, Any], payload)

    def alive(self) -> bool:
        return self.process.is_alive()


def start_engine_process(options: EngineOptions) -> EngineClient:
    """Initialise CUDA here, spawn the engine child and wait until it is ready."""
    import torch

    torch.cuda.init()
    cuda_tensor = torch.ones(FRONTEND_TENSOR_ELEMENTS, device=DEVICE)
    torch.cuda.synchronize()
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(target=_engine_main, args=(child_conn, options), name="reference-engine", daemon=True)
    process.start()
    child_conn.close()
    _log("engine_spawned", engine_pid=process.pid)
    while not conn.poll(ENGINE_START_POLL_SECONDS):
        if not process.is_alive():
            raise ServerError(f"engine process exited with code {process.exitcode} before it was ready")
    try:
        kind, payload = conn.recv()
    except EOFError as exc:
        raise ServerError("engine process closed its pipe before it was ready") from exc
    if kind == "error":
        process.join()
        raise ServerError(f"engine failed to start: {payload}")
    return EngineClient(conn, process, cuda_tensor, payload)
