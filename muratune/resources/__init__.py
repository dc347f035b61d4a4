"""Data files shipped with muratune: published MURA reference numbers (the shipped configs are in muratune.configs)."""
