"""Data files shipped with muratune: the demo config and published MURA reference numbers."""
