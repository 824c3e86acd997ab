"""How the CLI shows things: byte counts, messages as JSON, a progress line.

JSON conventions (docs/scheduler.md, "JSON output"): field names as in the .proto, every field present
(zero values included), integers as JSON numbers (protobuf's JSON mapping would quote 64-bit
ones), enums by name, timestamps RFC 3339.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, TextIO

import click
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from snapd.v1 import snapd_pb2 as pb
from snapd_client.client import phase_name

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
# a rate (and so an ETA) is shown once a phase has run this long
_ETA_MIN_SECONDS = 1.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _numbers(value: Any, descriptor: Descriptor) -> Any:
    """``value`` (MessageToDict's output for ``descriptor``) with 64-bit integers as ints."""
    for field in descriptor.fields:
        name = field.name
        if name not in value:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            if inner.type in _INT64:
                value[name] = {k: int(v) for k, v in value[name].items()}
            elif inner.message_type is not None:
                value[name] = {k: _numbers(v, inner.message_type) for k, v in value[name].items()}
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            if field.is_repeated:
                value[name] = [_numbers(v, field.message_type) for v in value[name]]
            else:
                value[name] = _numbers(value[name], field.message_type)
        elif field.type in _INT64:
            value[name] = [int(v) for v in value[name]] if field.is_repeated \
                else int(value[name])
    return value


def as_dict(msg: Message) -> dict[str, Any]:
    """``msg`` in the CLI's JSON form (see the module docstring)."""
    raw = MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    result: dict[str, Any] = _numbers(raw, msg.DESCRIPTOR)
    return result


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_text(p: pb.Progress, rate: float, elapsed: float) -> str:
    """One progress line: phase, bar and bytes, rate and ETA (when bytes move), whether the
    process tree is frozen, time since the start. ``rate``: bytes per second in this phase."""
    phase = phase_name(p.phase)
    parts = [f"{phase:<14}"]
    if p.bytes_total:
        frac = min(1.0, p.bytes_done / p.bytes_total)
        parts.append(f"[{'#' * int(frac * 24):<24}] {human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}")
        if rate > 0:
            parts.append(f"{human_bytes(rate)}/s")
            if p.bytes_done < p.bytes_total:
                parts.append(f"ETA {_duration((p.bytes_total - p.bytes_done) / rate)}")
    elif p.message:
        parts.append(p.message)
    if p.tree_frozen:
        parts.append("(process frozen)")
    parts.append(f"{elapsed:5.1f}s")
    return "  ".join(parts)


class ProgressLine:
    """One self-rewriting status line on ``stream`` (stderr), drawn only when it is a terminal:
    no escape sequences ever reach a file or a pipe. As a context manager it is wiped at the
    end, also when the call fails, so that a message printed then starts a line of its own;
    ``stop`` wipes it for good (after Ctrl-C: the messages about the cancel stay readable)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self._phase = -1
        self._phase_started = self.started
        self._phase_base = 0

    def __call__(self, p: pb.Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if p.phase != self._phase:
            self._phase, self._phase_started, self._phase_base = p.phase, now, p.bytes_done
        spent = now - self._phase_started
        rate = (p.bytes_done - self._phase_base) / spent if spent >= _ETA_MIN_SECONDS else 0.0
        self.stream.write(f"\r\033[K{progress_text(p, rate, now - self.started)}")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def stop(self) -> None:
        """Wipe the line and draw no more."""
        self.done()
        self.enabled = False

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()


_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def _snake(name: str) -> str:
    """"RawBytes" -> "raw_bytes" (the .proto's field name); "Id" -> "id"."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def check_template(template: str, descriptor: Descriptor) -> None:
    """Raise click.BadParameter naming the fields when ``template`` uses one ``descriptor`` lacks."""
    names = set(descriptor.fields_by_name)
    unknown = [m.group(1) for m in _FIELD.finditer(template) if _snake(m.group(1)) not in names]
    if unknown:
        known = ", ".join("".join(p.capitalize() for p in n.split("_")) for n in sorted(names))
        raise click.BadParameter(f"no field {unknown[0]!r}; the fields are {known}", param_hint="--format")


def render(template: str, msg: Message) -> str:
    """``template`` with each {{.Field}} replaced by ``msg``'s field (JSON form: labels and lists
    as JSON, timestamps RFC 3339); \\t and \\n stand for a tab and a newline."""
    values = as_dict(msg)

    def field(m: re.Match[str]) -> str:
        value = values.get(_snake(m.group(1)), "")
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    return _FIELD.sub(field, template.replace("\\t", "\t").replace("\\n", "\n"))
