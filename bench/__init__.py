"""Checkpoint/restore benchmarks (run bench/run.py; nothing here runs in CI)."""
