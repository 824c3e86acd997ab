"""How the CLI shows things: byte counts, messages as JSON, a progress line."""

from __future__ import annotations

import sys
import time
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from snapd.v1 import snapd_pb2 as pb

_PHASE_NAMES = {v.number: v.name.removeprefix("PHASE_").lower() for v in pb.Phase.DESCRIPTOR.values}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def as_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class ProgressLine:
    """One self-rewriting status line on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()

    def __call__(self, p: pb.Progress) -> None:
        if not self.enabled:
            return
        phase = _PHASE_NAMES.get(p.phase, "?")
        if p.bytes_total:
            frac = min(1.0, p.bytes_done / p.bytes_total)
            bar = "#" * int(frac * 30)
            text = f"{phase:<12} [{bar:<30}] {human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}"
        else:
            text = f"{phase:<12} {p.message}"
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\r\033[K{text} {elapsed:5.1f}s")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
