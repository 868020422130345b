"""`python -m seke` runs the CLI."""

from seke.cli import main

main()
