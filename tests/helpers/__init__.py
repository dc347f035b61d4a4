"""Helpers shared by the tests: tiny MURA datasets, search settings, CLI runs, a test ensemble, file digests."""
