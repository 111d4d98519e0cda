"""Benchmarks: each module exposes ``run() -> str`` (a Markdown section)."""
