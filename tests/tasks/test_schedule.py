"""What a schedule asks for: intervals, run-name patterns, parameters checked against the deployment."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tasks.schedule import AnnotateSchedule, expand_run_name, parse_interval


def test_intervals_parse_and_bad_ones_say_what_is_accepted() -> None:
    assert parse_interval("90s") == timedelta(seconds=90)
    assert parse_interval("6h") == timedelta(hours=6)
    assert parse_interval(" 1d ") == timedelta(days=1)
    for bad in ("0m", "6", "h", "1w", "-5m"):
        with pytest.raises(ValueError, match="s, m, h or d"):
            parse_interval(bad)


def test_run_name_patterns_take_the_scheduled_start() -> None:
    when = datetime(2026, 11, 29, 2, 0)
    assert expand_run_name("nightly-{scheduled:%Y%m%d}", when) == "nightly-20261129"
    assert expand_run_name("feid-v1", when) == "feid-v1"
    with pytest.raises(ValueError, match="only field is"):
        expand_run_name("run-{date}", when)


def test_parameters_are_the_ones_set_and_known_to_the_deployment() -> None:
    accepted = {"run_name", "limit", "max_cost_usd", "max_calls", "concurrency"}
    spec = AnnotateSchedule("nightly-{scheduled:%Y%m%d}", limit=500, max_cost_usd=20.0)
    assert spec.parameters(accepted) == {"run_name": "nightly-{scheduled:%Y%m%d}", "limit": 500, "max_cost_usd": 20.0}
    with pytest.raises(ValueError, match="no parameter workers"):
        AnnotateSchedule("r", workers=4).parameters(accepted)
    with pytest.raises(ValueError, match="only field is"):
        AnnotateSchedule("r-{when}").parameters(accepted)
