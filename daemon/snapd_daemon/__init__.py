"""snapd: checkpoint and restore live (GPU) process trees through CRIU.

Packages, lowest first; each imports only from those above it in this list:

    errors, logs, metrics, util/   cross-cutting: error classes, logging, metrics, small helpers
    host/                          the host: processes, stdio, cgroups, hooks, memory writes, NVML, CUDA, GPU decisions
    criu/                          CRIU: binary, RPC, typed notifications, dump/restore requests, image files
    store/                         content store: chunks, manifests as bytes, ingest, hot tier, prune, checks
    snapshots/                     what a snapshot is (manifest) and the catalog of a store's snapshots
    runtime/                       what operations share: settings, registry, hold journal, progress, staging
    checkpoint/, restore/          the two long operations, one run object each
    api/                           the gRPC edge: requests in, protobuf out, errors mapped once, access control
    server/                        the daemon process: start-up, listening, config, the `snapd` entry point

host/, criu/ and store/ do not import each other.
"""

__version__ = "0.1.0"
