"""The summary prompt's statistics use the run's normaliser, so they match the stored UAMC step."""

from __future__ import annotations

import pytest

from models.labels import ACTION_UNITS, Task
from tasks.uamc import normalised_uncertainties, task_statistics

TASKS = [Task.EXPRESSION, Task.VA, Task.AU]


def _sample(expression: str, valence: float, au_on: bool) -> dict:
    return {"expression": expression, "valence": valence, "arousal": 0.1, "aus": {au: au_on and au == "AU12" for au in ACTION_UNITS}}


@pytest.mark.parametrize("normaliser", ["fixed", "attainable"])
def test_statistics_use_the_given_normaliser(normaliser: str) -> None:
    samples = [_sample("happiness", 0.4, True), _sample("neutral", 0.1, False), _sample("happiness", 0.5, True)]
    stats = task_statistics(TASKS, samples, normaliser)
    expected = normalised_uncertainties(TASKS, samples, normaliser)
    for task in TASKS:
        assert stats[task.value]["uncertainty"] == round(expected[task], 4)


def test_attainable_and_fixed_differ_so_the_choice_matters() -> None:
    samples = [_sample("happiness", 0.4, True), _sample("neutral", 0.1, False), _sample("happiness", 0.5, True)]
    fixed = task_statistics(TASKS, samples, "fixed")["expression"]["uncertainty"]
    attainable = task_statistics(TASKS, samples, "attainable")["expression"]["uncertainty"]
    assert attainable > fixed
