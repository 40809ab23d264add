"""Helpers for tests and benchmarks: deterministic recipe weights and synthetic inputs."""
