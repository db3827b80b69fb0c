"""Benchmarks: `wan-triton bench` runs them and renders docs/PERFORMANCE.md (benchmarks/run.py).

Every figure is a ratio of two measurements taken side by side in one run on one machine.
"""
