"""The configs shipped with muratune: demo, mura-densenet and mura-wide (validated by tests)."""
