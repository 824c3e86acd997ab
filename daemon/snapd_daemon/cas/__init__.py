"""Content-addressed snapshot store: zstd chunks named by their BLAKE3 hash."""
