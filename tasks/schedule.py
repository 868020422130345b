"""Recurring annotate runs: what a schedule asks for, as plain data (the Prefect calls are in flows/schedules.py).

A schedule's runs all get the same parameters, so the run name is a pattern that
each flow run expands with its own scheduled start time: `nightly-{scheduled:%Y%m%d}`
makes one run per night, while a plain `feid-v1` resumes the same run every time
(a large run worked through in nightly slices under a per-run budget).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_interval(text: str) -> timedelta:
    """`90s`, `15m`, `6h`, `1d` → a timedelta; anything else is a ValueError that says what is accepted."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"interval {text!r}: expected a positive number followed by s, m, h or d (e.g. 6h)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def expand_run_name(pattern: str, scheduled: datetime) -> str:
    """`pattern` with `{scheduled:<strftime>}` filled in from the run's scheduled start time."""
    fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    if not fields:
        return pattern
    if fields != {"scheduled"}:
        raise ValueError(f"run name pattern {pattern!r}: the only field is {{scheduled:<strftime>}}, got {sorted(fields)}")
    return pattern.format(scheduled=scheduled)


@dataclass(frozen=True)
class AnnotateSchedule:
    """The annotate parameters a schedule's runs get; None leaves the deployment's default."""

    run_name: str
    limit: int | None = None
    max_cost_usd: float | None = None
    max_calls: int | None = None
    concurrency: int | None = None
    workers: int | None = None

    def parameters(self, accepted: set[str]) -> dict[str, Any]:
        """Flow parameters, checked against the names the deployment accepts (`accepted`)."""
        expand_run_name(self.run_name, datetime(2000, 1, 1))  # a bad pattern fails now, not at 2 a.m.
        chosen = {key: value for key, value in vars(self).items() if value is not None}
        unknown = sorted(set(chosen) - accepted)
        if unknown:
            raise ValueError(
                f"the annotate deployment takes no parameter {', '.join(unknown)} "
                f"(it takes: {', '.join(sorted(accepted))}); re-register it (python infra/deployments.py) after upgrading"
            )
        return chosen
