"""The test suite: it mirrors the package; shared helpers live in tests/helpers/."""
