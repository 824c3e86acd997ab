"""Adapters to the host: process trees (processes), killing one still forking (treekill),
their open files (procfds), stdio (stdio) and controlling terminals (terminals), links
kept for their unlinked open files (linkremap), cgroups, hook commands (hooks), writing
other processes' memory (memwrite), and the GPU side: NVML read once (nvml), the CUDA
checkpoint driver API (cuda), and the GPU decisions built on both (gpu).

Imports only errors and util; must never import CRIU, the store, snapshots, the
operations, the API or the server.
"""
