"""Benchmarks, each run as `python -m bench.<name>`; `bench.lcbench` holds the LCBench surrogate search's parts."""
