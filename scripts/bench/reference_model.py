"""The reference server's model: its shapes (presets), seeded random bf16 weights written as
safetensors shards, and loading them onto the GPU; plus what every part of the server shares
(the error class, JSON log lines, the device). torch is imported only inside functions, so
the server's environment settings (reference_server.py) come first."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEVICE = "cuda:0"


SHARD_BYTES = 4 * 10**9


INIT_STD = 0.02


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
