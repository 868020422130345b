"""`python -m seke` runs the CLI."""

from seke.cli import app

app()
