"""CUDA driver bindings used by snapd."""
