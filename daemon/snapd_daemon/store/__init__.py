"""The content store: zstd chunks named by their BLAKE3 hash, manifests as opaque bytes.

Owns: the chunk codec (codec), the chunk directory (chunkdir), ingest with
begin / submit / complete / commit / abort (ingest), verified reads, prefetch,
prune as plan-then-execute and integrity checks (local), manifests and pins
(manifests), the RAM hot tier (hot), the store lock (rwlock), chunks and
manifests put aside as bad (quarantine), and the interface the operations
use (protocol).

Must never import: anything of processes, CRIU, GPUs, cgroups, snapshots or
the operations (host, criu, snapshots, runtime, checkpoint, restore, api,
server). It knows chunks and bytes, not what they mean.
"""
