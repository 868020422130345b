"""The offline OpenAI-compatible simulator: a rehearsal tool that only the CLI, bench scripts and tests import."""
