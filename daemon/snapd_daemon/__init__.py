"""snapd: checkpoint and restore live (GPU) process trees through CRIU."""

__version__ = "0.1.0"
