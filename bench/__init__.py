"""Benchmark harness for todo-api: `python -m bench` (see bench/README.md)."""
