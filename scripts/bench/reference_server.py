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
import dataclasses
import http.server
import json
import os
import signal
import socketserver
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from reference_engine import (
    WARMUP_NEW_TOKENS,
    WARMUP_PROMPT,
    Backend,
    Engine,
    EngineOptions,
    LocalBackend,
    start_engine_process,
)
from reference_model import PRESETS, ServerError, Shape, _log, prepare_weights
from tp_backend import NcclDown, TensorParallelBackend

if TYPE_CHECKING:

    pass

# Set before torch is first imported (lazily, below). Inductor's compile workers are
# forked from this CUDA process and keep its /dev/nvidia* mappings without a CUDA
# context: CRIU cannot dump them. One compile thread means no worker processes.
os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


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


# --- the engine --------------------------------------------------------------------


# --- front-end -------------------------------------------------------------------


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
