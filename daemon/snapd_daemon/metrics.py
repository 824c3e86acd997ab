"""Prometheus metrics: operation counts, phase durations, bytes moved.

All metrics live in one registry served by ``serve`` (off unless the daemon is
given --metrics-address).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

REGISTRY = CollectorRegistry(auto_describe=True)

OPERATIONS = Counter(
    "snapd_operations", "Operations finished, by kind and result", ["kind", "result"], registry=REGISTRY
)
PHASE_SECONDS = Histogram(
    "snapd_phase_duration_seconds",
    "Time spent per operation phase",
    ["kind", "phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
    registry=REGISTRY,
)
BYTES_WRITTEN = Counter("snapd_bytes_written", "Snapshot bytes written to the store", registry=REGISTRY)
BYTES_READ = Counter("snapd_bytes_read", "Snapshot bytes read from the store by restores", registry=REGISTRY)
IN_FLIGHT = Gauge("snapd_operations_in_flight", "Operations running now", registry=REGISTRY)


@contextmanager
def phase(kind: str, name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        PHASE_SECONDS.labels(kind, name).observe(time.monotonic() - start)


def serve(address: str) -> None:
    """Serve /metrics on ``host:port`` in a background thread."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=REGISTRY)
