"""CRIU: finding the binary, its RPC (swrk), its action points (notify), the
dump and restore requests (actions), and its image files (images).

Imports only errors and util; must never import the store, snapshots, the
operations, the API or the server.
"""
