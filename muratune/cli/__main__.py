"""`python -m muratune.cli`: the same as the `muratune` command."""

from muratune.cli import main

main()
