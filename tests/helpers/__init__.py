"""Helpers shared by the tests: tiny MURA-layout datasets and test-sized search settings."""
