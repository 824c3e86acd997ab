"""The gRPC edge: requests parsed and validated into typed specs (requests),
domain objects into protobuf (convert), SnapdError into gRPC status and
trailers (status), who may call (access, gate), and the servicer (service).

Imports the operations and everything below them; must never import the server.
"""
