"""The plan before paying, against what a real run of the same images on the simulator spent."""

from __future__ import annotations


import pytest

from core.config import Settings
from simulator.server import SimulatorConfig, running_simulator
from tasks.annotate import AnnotateConfig
from tasks.plan import Range, expected_samples, pilot_images
from tasks.uamc import UAMCConfig

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_uamc_law_gives_2_875_samples_when_answers_agree_and_n_at_most() -> None:
    assert expected_samples(AnnotateConfig()) == Range(2.875, 5)
    assert expected_samples(AnnotateConfig(uamc=UAMCConfig(max_samples=3))) == Range(2.5, 3)
    assert expected_samples(AnnotateConfig(uamc=UAMCConfig(enabled=False))) == Range(1, 1)


def test_pilot_images_spread_over_the_strata() -> None:
    from models.labels import Task
    from tasks.plan import PlannedImage

    au_only = [PlannedImage(i, (Task.AU,), 500, 255) for i in range(0, 60)]
    all_three = [PlannedImage(i, tuple(Task), 600, 255) for i in range(60, 100)]
    chosen = pilot_images(au_only + all_three, 5)
    assert len(chosen) == 5 and sum(i < 60 for i in chosen) == 3  # in proportion: 60% and 40%
    assert pilot_images(au_only[:2], 5) == [0, 1]



@pytest.mark.parametrize(
    "config", [AnnotateConfig(), AnnotateConfig(prompt_layout="cached", shared_prefill=True)], ids=["paper", "cached+n"]
)
def test_plan_is_within_15_percent_of_a_simulator_run_of_the_same_images(fresh: Settings, config: AnnotateConfig) -> None:
    from flows.annotate import annotate_flow
    from flows.plan import plan_annotate

    with running_simulator(SimulatorConfig()) as base_url:
        endpoint = {"base_url": base_url, "model": "seke-simulator"}
        law = plan_annotate("planned", config=config, limit=30)
        pilot = plan_annotate("planned", config=config, limit=30, pilot=10, **endpoint)
        actual = annotate_flow(run_name="planned", config=config, limit=30, **endpoint)

    assert actual.status == "completed" and law.images == pilot.images == 30
    measured = {"calls": actual.calls, "tokens_in": actual.tokens_in, "tokens_out": actual.tokens_out,
                "tokens_cached": actual.tokens_cached}  # fmt: skip
    # The law bounds calls and tokens (within 15% at the edges: it counts no invalid answer and estimates prompt text).
    for key in measured:
        assert getattr(law, key).contains(measured[key], slack=0.15), (key, getattr(law, key), measured[key])
    # The pilot's estimate (the middle of its range) is within 15% of what the run spent. Not its cached
    # tokens: the pilot's own calls left the same prompts in the cache, so the run after it gets more.
    del measured["tokens_cached"]
    for key, value in measured.items():
        estimate = getattr(pilot, key).mid
        assert abs(estimate - value) <= 0.15 * value, (key, estimate, value)
    assert pilot.cost_usd.contains(actual.cost_usd, slack=0.15)
    assert pilot.wall_s.high < 60 and "pilot of 10 images" in pilot.basis
