"""Prometheus metrics: operation counts, phase durations, bytes moved, instances, the store.

All metrics live in one registry served by ``serve`` (off unless the daemon is
given --metrics-address).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
INSTANCES = Gauge("snapd_instances", "Instances the daemon keeps, by state", ["state"], registry=REGISTRY)
RESTORE_TO_READY = Histogram(
    "snapd_restore_to_ready_seconds",
    "From a restore call's start to its instance ready (its readiness probe passed; running, without one)",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
    registry=REGISTRY,
)
REMOTE_BYTES = Counter("snapd_remote_bytes", "Bytes (stored form) moved to (up) and from (down) the remote tier",
                       ["direction"], registry=REGISTRY)
# (bytes of the chunk files, chunks, chunks in quarantine), read at each scrape
StoreFigures = Callable[[], tuple[int, int, int]]


class _StoreCollector(Collector):
    def __init__(self, figures: StoreFigures) -> None:
        self.figures = figures

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # not scanned at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stored, chunks, quarantined = self.figures()
        yield GaugeMetricFamily("snapd_store_bytes", "Bytes the store's chunk files occupy", value=stored)
        yield GaugeMetricFamily("snapd_store_chunks", "Chunks in the store", value=chunks)
        yield GaugeMetricFamily("snapd_store_quarantined_chunks", "Chunks in quarantine after failing their hash",
                                value=quarantined)


def watch_store(figures: StoreFigures) -> None:
    """Report the store's size, chunks and quarantined chunks, as ``figures`` reads them at each scrape."""
    REGISTRY.register(_StoreCollector(figures))


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
