"""Errors seke raises on purpose: each carries one message naming what went wrong and how to fix
it, and the exit code the CLI ends with (seke/cli.py `main`). Anything else that escapes a
command is a bug: the CLI shows its traceback."""

from __future__ import annotations


class SekeError(Exception):
    """Failed work the user can fix or retry (exit code 1)."""

    exit_code = 1


class ConfigurationError(SekeError):
    """Settings, permissions or a service seke was pointed at, unusable as given (exit code 2, like usage errors)."""

    exit_code = 2
