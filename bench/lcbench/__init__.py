"""The parts of `python -m bench.search_scale`: the LCBench surrogate, the methods, the simulation and the measures."""
