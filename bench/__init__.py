"""Benchmarks: generated models against the reference implementations, side by side (`make bench`).

`python -m bench` (bench/driver.py) runs one process per framework (bench/worker.py), gathers their JSON
and prints ratios reference_time / generated_time (>= 1.00: the generated model is at least as fast).
"""
