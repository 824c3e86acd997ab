"""Snapshots: the manifest record and the catalog of a store's snapshots.

Owns: what a snapshot is (manifest) and the snapshot-level view of the store
(catalog: find by id or name, publish, delete, gc, fsck, prefetch).
Imports the store and the host's record types; must never import the
operations (runtime, checkpoint, restore), the API or the server.
"""
