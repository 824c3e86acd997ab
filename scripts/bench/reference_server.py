#!/usr/bin/env python3
"""Reference inference server with the process shape of a vLLM server, for GPU tests.

Serve (the default command):
  reference_server.py --weights-dir DIR [--preset 8b|tiny] [--layers N --hidden N ...]
      [--port 0] [--ready-file PATH] [--kv-cache-fraction F] [--cuda-graph]
      [--engine-process] [--compile] [--seed N] [--prepare-only]
Ask a running server:
  reference_server.py ask --port P [--tokens 1,2,3] [--max-new-tokens 16] [--health | --sleep | --wake-up]
Call a hook endpoint (snapd's pre-checkpoint / post-restore hook commands):
  reference_server.py hook --port P pre-checkpoint|post-restore

The model is a Llama of the chosen shape with seeded random bf16 weights, generated
on the GPU into DIR (safetensors shards + config.json) on first use and reused after;
--prepare-only does just that, so that a later start measures a cold start alone.
Requests carry token ids (no tokenizer); answers are greedy.

HTTP on 127.0.0.1:PORT:
  GET  /health    -> {"ready": true, "pid", "engine_pid", "mode", "compiled", "cuda_graph"}
  POST /generate  {"tokens": [ids], "max_new_tokens": 16}
                  -> {"tokens": [new ids], "seconds", "graph_checksum"}
  POST /sleep?level=1, POST /wake_up, GET /is_sleeping
                  -> {"is_sleeping", "kv_cache_bytes"}: vLLM's sleep mode (level 1 releases
                     the KV cache's GPU memory; /generate is refused while asleep), used as
                     snapd's pre-checkpoint and post-restore hooks so that a checkpoint
                     does not copy the KV cache (see Engine.control)
The ready file (JSON: port, pid, engine_pid, mode, startup_seconds, timings) is written
atomically once warm-up is done; startup_seconds counts from the process's start.
Logs are JSON lines on stderr; stdin is never read, no terminal is needed.

--tensor-parallel N: N rank processes, one per GPU, talking NCCL (tp_backend.py); its
POST /pre-checkpoint and /post-restore tear the NCCL communicators down and build them
again (in the other modes they answer {"nccl": false} and do nothing).

--engine-process: the HTTP front-end initialises CUDA itself and runs the model in an
engine child started with the "spawn" method (a forked child of a CUDA process keeps
/dev/nvidia* mappings without a context, which CRIU cannot dump); they talk over a Pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.server
import json
import multiprocessing
import os
import signal
import socketserver
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from tp_backend import NcclDown, TensorParallelBackend

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    import torch

# Set before torch is first imported (lazily, below). Inductor's compile workers are
# forked from this CUDA process and keep its /dev/nvidia* mappings without a CUDA
# context: CRIU cannot dump them. One compile thread means no worker processes.
os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

DEVICE = "cuda:0"
SHARD_BYTES = 4 * 10**9
INIT_STD = 0.02
WARMUP_PROMPT = list(range(1, 17))
# A second prompt length, so that a compiled model has its dynamic shapes before ready.
COMPILE_WARMUP_PROMPT = list(range(1, 8))
WARMUP_NEW_TOKENS = 16
GRAPH_INPUT_ROWS = 64
GRAPH_WEIGHT_ROWS = 1024
FRONTEND_TENSOR_ELEMENTS = 1 << 20
ENGINE_START_POLL_SECONDS = 1.0
SHAPE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)


class ServerError(Exception):
    """A failure the server reports in one line and exits on (or answers 500 with)."""


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int = 8192
    rope_theta: float = 500000.0

    def config(self) -> dict[str, Any]:
        """config.json of a Llama of this shape (legacy and transformers-5 rope keys both)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
        }


PRESETS = {
    "8b": Shape(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256),
    "tiny": Shape(layers=2, hidden=1024, intermediate=2816, heads=8, kv_heads=8, vocab=32000),
}


@dataclass(frozen=True)
class EngineOptions:
    weights_dir: Path
    shape: Shape
    seed: int
    kv_cache_fraction: float
    cuda_graph: bool
    compile: bool


def _log(event: str, **fields: Any) -> None:
    """Write one JSON line to stderr."""
    record = {"time": round(time.time(), 3), "pid": os.getpid(), "event": event, **fields}
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Time the block: log it and record it in timings as PHASE_seconds."""
    started = time.perf_counter()
    yield
    seconds = round(time.perf_counter() - started, 3)
    timings[f"{phase}_seconds"] = seconds
    _log(phase, seconds=seconds)


def process_age() -> float:
    """Seconds since this process started (from /proc, so interpreter start-up counts)."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22, starttime, counted from field 3 after the comm
    with open("/proc/uptime", encoding="ascii") as uptime:
        now = float(uptime.read().split()[0])
    return round(now - start_ticks / os.sysconf("SC_CLK_TCK"), 3)


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)


# --- weights ---------------------------------------------------------------------


def _plan_shards(specs: Sequence[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split (name, shape) of bf16 tensors into shards of at most SHARD_BYTES (a bigger tensor alone)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in specs:
        nbytes = 2 * _numel(dims)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    return shards


def _numel(dims: tuple[int, ...]) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count


def prepare_weights(directory: Path, shape: Shape, seed: int) -> bool:
    """Make directory hold a model of this shape; returns True if it had to be generated.

    An existing config.json of another shape is an error. Generation happens on the GPU,
    shard by shard, into a staging directory that is renamed into place when complete.
    """
    config_path = directory / "config.json"
    wanted = shape.config()
    if config_path.exists():
        existing = json.loads(config_path.read_text())
        differing = {key: existing.get(key) for key in SHAPE_KEYS if existing.get(key) != wanted[key]}
        if differing:
            raise ServerError(
                f"{directory} holds a model of another shape ({differing}, wanted "
                f"{ {key: wanted[key] for key in differing} }); pass another --weights-dir"
            )
        return False
    if directory.exists() and any(directory.iterdir()):
        raise ServerError(f"{directory} is not empty but has no config.json; pass another --weights-dir")

    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    staging = directory.with_name(f".{directory.name}.{os.getpid()}.partial")
    staging.mkdir(parents=True)
    (staging / "config.json").write_text(json.dumps(wanted, indent=2) + "\n")
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(LlamaConfig.from_pretrained(staging))
    specs = [(name, tuple(tensor.shape)) for name, tensor in skeleton.state_dict().items()]
    shards = _plan_shards(specs)
    generator = torch.Generator(device=DEVICE)
    generator.manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for number, shard in enumerate(shards, 1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for name, dims in shard:
            tensor = torch.empty(dims, dtype=torch.bfloat16, device=DEVICE)
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, INIT_STD, generator=generator)
            tensors[name] = tensor.cpu()
            weight_map[name] = filename
            total += 2 * tensor.numel()
        save_file(tensors, str(staging / filename), metadata={"format": "pt"})
        _log("weights_shard", file=filename, tensors=len(tensors))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    torch.cuda.empty_cache()
    if directory.exists():
        directory.rmdir()
    staging.rename(directory)
    return True


def load_model(directory: Path) -> torch.nn.Module:
    """The Llama in directory, in bf16 on DEVICE, every weight read from its safetensors."""
    import torch
    from safetensors import safe_open
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(directory)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    targets = model.state_dict()
    missing = set(targets)
    with torch.no_grad():
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), framework="pt", device="cpu") as shard:
                for name in shard.keys():
                    if name not in targets:
                        raise ServerError(f"{path}: tensor {name} is not part of the model")
                    targets[name].copy_(shard.get_tensor(name))
                    missing.discard(name)
    if missing:
        raise ServerError(f"{directory}: no weights for {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    return model.eval()


# --- the engine --------------------------------------------------------------------


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


# --- front-end -------------------------------------------------------------------


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


def parse_request(body: object, vocab: int, max_positions: int) -> tuple[list[int], int]:
    """(tokens, max_new_tokens) of a /generate body; raises ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    tokens = body.get("tokens")
    max_new_tokens = body.get("max_new_tokens", 16)
    if (
        not isinstance(tokens, list)
        or not tokens
        or not all(type(token) is int and 0 <= token < vocab for token in tokens)
    ):
        raise ValueError(f"tokens must be a non-empty list of token ids in 0..{vocab - 1}")
    if type(max_new_tokens) is not int or not 1 <= max_new_tokens <= max_positions - len(tokens):
        raise ValueError(f"max_new_tokens must be an integer in 1..{max_positions - len(tokens)}")
    return tokens, max_new_tokens


class ReferenceHTTPServer(socketserver.TCPServer):
    """One request at a time, on the main thread (the thread that built the model).

    A plain TCPServer: http.server.HTTPServer would resolve the host name at bind.
    """

    allow_reuse_address = True

    def __init__(self, port: int, backend: Backend, info: dict[str, Any], shape: Shape) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.backend = backend
        self.info = info
        self.shape = shape


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 60

    def _server(self) -> ReferenceHTTPServer:
        return cast(ReferenceHTTPServer, self.server)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _sleep_mode(self, command: str, query: dict[str, list[str]]) -> None:
        """vLLM's POST /sleep?level=1, POST /wake_up, GET /is_sleeping (single-process and
        engine-process modes; the tensor-parallel backend has no KV cache to release)."""
        control = getattr(self._server().backend, "control", None)
        if control is None:
            self._reply(400, {"error": "sleep mode is not available in tensor-parallel mode"})
            return
        try:
            level = int(query.get("level", ["1"])[0])
            answer = control(command, level)
        except (ValueError, ServerError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, answer)

    def do_GET(self) -> None:
        if self.path == "/is_sleeping":
            self._sleep_mode("is_sleeping", {})
            return
        if self.path != "/health":
            self._reply(404, {"error": f"no such path {self.path}"})
            return
        server = self._server()
        ready = server.backend.alive()
        self._reply(200 if ready else 503, {"ready": ready, **server.info})

    def _hook(self) -> None:
        backend = self._server().backend
        action = getattr(backend, "teardown" if self.path == "/pre-checkpoint" else "rebuild", None)
        try:
            self._reply(200, action() if action else {"nccl": False})
        except ServerError as exc:
            _log("hook_failed", path=self.path, error=str(exc))
            self._reply(500, {"error": str(exc)})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/sleep", "/wake_up"):
            self._sleep_mode(url.path.lstrip("/"), urllib.parse.parse_qs(url.query))
            return
        if self.path in ("/pre-checkpoint", "/post-restore"):
            self._hook()
            return
        if self.path != "/generate":
            self._reply(404, {"error": f"no such path {self.path}"})
            return
        server = self._server()
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            tokens, max_new_tokens = parse_request(body, server.shape.vocab, server.shape.max_positions)
        except ValueError as exc:
            self._reply(400, {"error": str(exc)})
            return
        try:
            answer = server.backend.generate(tokens, max_new_tokens)
        except NcclDown as exc:
            self._reply(503, {"error": str(exc)})
            return
        except ServerError as exc:
            _log("generate_failed", error=str(exc))
            self._reply(500, {"error": str(exc)})
            return
        self._reply(200, answer)

    def log_message(self, format: str, *args: Any) -> None:
        _log("http", request=format % args)


# --- command line ----------------------------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reference_server.py", description="Reference inference server (see the module docstring)."
    )
    parser.add_argument("--weights-dir", type=Path, required=True, help="model directory; generated if absent")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="8b", help="model shape (default 8b)")
    parser.add_argument("--layers", type=int, help="override the preset's number of layers")
    parser.add_argument("--hidden", type=int, help="override the preset's hidden size")
    parser.add_argument("--intermediate", type=int, help="override the preset's MLP size")
    parser.add_argument("--heads", type=int, help="override the preset's attention heads")
    parser.add_argument("--kv-heads", type=int, help="override the preset's KV heads")
    parser.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    parser.add_argument("--max-positions", type=int, help="override max_position_embeddings (8192)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated weights")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 picks one)")
    parser.add_argument("--ready-file", type=Path, help="JSON written once ready: port, pid, timings")
    parser.add_argument(
        "--kv-cache-fraction", type=float, default=0.0, help="preallocate this fraction of free GPU memory"
    )
    parser.add_argument("--cuda-graph", action="store_true", help="capture a CUDA graph, replay it per request")
    parser.add_argument("--engine-process", action="store_true", help="run the model in a spawned engine child")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                        help="N rank processes, one per GPU, over NCCL (hooks: /pre-checkpoint, /post-restore)")
    parser.add_argument("--prepare-only", action="store_true", help="generate the weights if needed, then exit")
    return parser


def _shape(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Shape:
    overrides = {
        field: getattr(args, field)
        for field in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "max_positions")
        if getattr(args, field) is not None
    }
    shape = dataclasses.replace(PRESETS[args.preset], **overrides)
    if min(shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.vocab) <= 0:
        parser.error("model sizes must be positive")
    if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
        parser.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    if shape.max_positions <= len(WARMUP_PROMPT) + WARMUP_NEW_TOKENS:
        parser.error(f"--max-positions must exceed {len(WARMUP_PROMPT) + WARMUP_NEW_TOKENS}")
    return shape


def serve(argv: Sequence[str]) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    parser = _serve_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.kv_cache_fraction < 1.0:
        parser.error("--kv-cache-fraction must be in [0, 1)")
    shape = _shape(args, parser)
    options = EngineOptions(
        weights_dir=args.weights_dir.resolve(),
        shape=shape,
        seed=args.seed,
        kv_cache_fraction=args.kv_cache_fraction,
        cuda_graph=args.cuda_graph,
        compile=args.compile,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        if args.prepare_only:
            generated = prepare_weights(options.weights_dir, shape, args.seed)
            _log("prepared", weights_dir=str(options.weights_dir), generated=generated)
            return 0
        backend: Backend
        if args.tensor_parallel > 1:
            backend = TensorParallelBackend(options, args.tensor_parallel, ServerError)
        elif args.engine_process:
            backend = start_engine_process(options)
        else:
            timings: dict[str, float] = {}
            backend = LocalBackend(Engine(options, timings), timings)
        mode = (f"tensor-parallel-{args.tensor_parallel}" if args.tensor_parallel > 1
                else "engine-process" if args.engine_process else "single-process")
        info = {
            "pid": os.getpid(),
            "engine_pid": backend.engine_pid,
            "mode": mode,
            "compiled": args.compile,
            "cuda_graph": args.cuda_graph,
        }
        server = ReferenceHTTPServer(args.port, backend, info, shape)
    except ServerError as exc:
        _log("failed", error=str(exc))
        print(f"reference_server: {exc}", file=sys.stderr)
        return 2
    ready = {
        **info,
        "port": server.server_address[1],
        "startup_seconds": process_age(),
        "timings": backend.timings,
    }
    _log("ready", **ready)
    if args.ready_file:
        _write_json_atomically(args.ready_file, ready)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def ask(argv: Sequence[str]) -> int:
    """Client: print the server's JSON answer; exit status 1 on an HTTP error."""
    parser = argparse.ArgumentParser(prog="reference_server.py ask", description="Ask a running reference server.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", default="1,2,3", help="comma-separated token ids")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--health", action="store_true", help="GET /health instead of generating")
    parser.add_argument("--sleep", action="store_true", help="POST /sleep?level=1 (release the KV cache)")
    parser.add_argument("--wake-up", action="store_true", help="POST /wake_up (allocate the KV cache again)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    if args.health:
        request = urllib.request.Request(f"{base}/health")
    elif args.sleep or args.wake_up:
        request = urllib.request.Request(f"{base}/sleep?level=1" if args.sleep else f"{base}/wake_up", method="POST")
    else:
        try:
            tokens = [int(token) for token in args.tokens.split(",") if token.strip()]
        except ValueError:
            parser.error("--tokens must be comma-separated integers")
        body = json.dumps({"tokens": tokens, "max_new_tokens": args.max_new_tokens}).encode()
        request = urllib.request.Request(
            f"{base}/generate", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(response.read().decode())
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"))
        return 1
    return 0


def hook(argv: Sequence[str]) -> int:
    """POST a hook endpoint; exit status 1 unless it answers 200 (snapd then fails the operation)."""
    parser = argparse.ArgumentParser(prog="reference_server.py hook", description="Call a hook endpoint.")
    parser.add_argument("--port", type=int, help="default: the first port in $SNAPD_PUBLISHED (a replica's)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("endpoint", choices=["pre-checkpoint", "post-restore"])
    args = parser.parse_args(argv)
    published = os.environ.get("SNAPD_PUBLISHED", "").split()
    if args.port is None and not published:
        parser.error("--port is needed unless snapd passes SNAPD_PUBLISHED (a restore with its own network)")
    address = f"127.0.0.1:{args.port}" if args.port is not None else published[0].split("=", 1)[1]
    request = urllib.request.Request(f"http://{address}/{args.endpoint}", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(response.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        print(f"reference_server hook {args.endpoint}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["ask"]:
        return ask(argv[1:])
    if argv[:1] == ["hook"]:
        return hook(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
