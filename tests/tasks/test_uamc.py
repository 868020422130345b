"""UAMC (Algorithm 1) as docs/design.md ("UAMC, made precise") states it."""

from __future__ import annotations

import numpy as np
import pytest

from models.labels import ACTION_UNITS, EXPRESSIONS, Task
from tasks.uamc import (
    UAMCConfig,
    decide,
    image_rng,
    initial_samples,
    normalised_uncertainties,
    raw_uncertainty,
    task_statistics,
)

ALL = (Task.EXPRESSION, Task.VA, Task.AU)


def sample(expression: str = "happiness", valence: float = 0.5, arousal: float = 0.2, present: tuple[str, ...] = ("AU6", "AU12")) -> dict:
    return {
        "expression": expression,
        "valence": valence,
        "arousal": arousal,
        "aus": {au: au in present for au in ACTION_UNITS},
    }


def total_samples(draw_sample, config: UAMCConfig, rng: np.random.Generator) -> int:
    """Run Algorithm 1 with a sample generator; returns S_n at the end."""
    samples = [draw_sample(i) for i in range(initial_samples(config))]
    if not config.enabled:
        return len(samples)
    step = 0
    while True:
        decision = decide(step, ALL, samples, config, rng)
        if decision.decision != "sample":
            return len(samples)
        samples.append(draw_sample(len(samples)))
        step += 1


def test_agreeing_samples_average_2_875_samples() -> None:
    # U = 0 -> p_acc = 1/2 at every step: E[S] = 2 + 1/2 + 1/4 + 1/8 = 2.875 with N = 5.
    config = UAMCConfig()
    totals = [total_samples(lambda i: sample(), config, image_rng(seed, "run", "img")) for seed in range(20_000)]
    assert np.mean(totals) == pytest.approx(2.875, abs=0.02)
    assert min(totals) == 2 and max(totals) == 5


def opposite(i: int) -> dict:
    """Answers that disagree as much as possible: VA and every AU flip at each sample."""
    return sample(valence=1.0 if i % 2 else -1.0, present=ACTION_UNITS if i % 2 else ())


def test_maximal_disagreement_always_reaches_n() -> None:
    # Ũ = 1 at every step with the attainable normaliser -> p_acc = 1 -> always sample.
    for seed in range(500):
        assert total_samples(opposite, UAMCConfig(max_samples=7, normaliser="attainable"), image_rng(seed, "r", "x")) == 7


def test_maximal_disagreement_with_fixed_normaliser_nearly_always_reaches_n() -> None:
    # Fixed normaliser: Ũ = 1 at even S_n, 1 - 1/S_n² at odd S_n (p_acc = 17/18 at S_n = 3).
    totals = [total_samples(opposite, UAMCConfig(), image_rng(seed, "r", "x")) for seed in range(5_000)]
    assert np.mean(np.array(totals) == 5) == pytest.approx(17 / 18, abs=0.015)
    assert min(totals) >= 3


def test_p_acc_is_half_plus_half_u_max() -> None:
    samples = [sample("happiness"), sample("sadness")]
    step = decide(0, ALL, samples, UAMCConfig(), np.random.default_rng(0))
    u = normalised_uncertainties(ALL, samples)
    assert step.u_max == max(u.values())
    assert step.p_acc == pytest.approx(0.5 + 0.5 * step.u_max)
    assert step.decision == ("sample" if step.p < step.p_acc else "stop")


def test_attainable_maximum_matches_a_brute_force_search() -> None:
    from itertools import product

    from tasks.uamc import attainable_maximum

    for n in (2, 3, 4, 5):
        best = max(raw_uncertainty(Task.EXPRESSION, [sample(e) for e in combo]) for combo in product(EXPRESSIONS[:5], repeat=n))
        assert attainable_maximum(Task.EXPRESSION, n) == pytest.approx(best)
        best_va = max(raw_uncertainty(Task.VA, [sample(valence=v, arousal=v) for v in combo]) for combo in product((-1.0, 1.0), repeat=n))
        assert attainable_maximum(Task.VA, n) == pytest.approx(best_va)


def test_normalisers() -> None:
    uniform = [sample(e) for e in EXPRESSIONS]
    assert raw_uncertainty(Task.EXPRESSION, uniform) == pytest.approx(1 - 1 / 8)
    assert normalised_uncertainties([Task.EXPRESSION], uniform)[Task.EXPRESSION] == pytest.approx(1.0)
    extremes = [sample(valence=-1.0, arousal=-1.0), sample(valence=1.0, arousal=1.0)]
    assert raw_uncertainty(Task.VA, extremes) == pytest.approx(1.0)
    half = [sample(present=ACTION_UNITS), sample(present=())]
    assert raw_uncertainty(Task.AU, half) == pytest.approx(0.25)
    assert normalised_uncertainties([Task.AU], half)[Task.AU] == pytest.approx(1.0)
    # VA task U is the mean of the two variances.
    mixed = [sample(valence=-1.0, arousal=0.0), sample(valence=1.0, arousal=0.0)]
    assert raw_uncertainty(Task.VA, mixed) == pytest.approx(0.5)


def test_at_n_the_step_records_max_reached_without_a_draw() -> None:
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    step = decide(3, ALL, [sample()] * 5, UAMCConfig(max_samples=5), rng)
    assert (step.decision, step.p, step.p_acc) == ("max-reached", None, None)
    assert rng.bit_generator.state == before  # no draw consumed: resume stays aligned


def test_seeded_stream_repeats_per_run_and_image() -> None:
    a = [image_rng(7, "run-a", "sha").random() for _ in range(1)]
    assert a == [image_rng(7, "run-a", "sha").random()]
    assert image_rng(7, "run-a", "sha").random() != image_rng(7, "run-b", "sha").random()


def test_uamc_off_takes_one_sample() -> None:
    config = UAMCConfig(enabled=False)
    assert total_samples(lambda i: sample(), config, np.random.default_rng(0)) == 1


def test_task_statistics_give_mode_means_and_fractions() -> None:
    stats = task_statistics(ALL, [sample("happiness", 0.4, 0.2), sample("happiness", 0.6, 0.4), sample("neutral", 0.5, 0.3)])
    assert stats["expression"]["mode"] == "happiness"
    assert stats["va"]["valence_mean"] == pytest.approx(0.5)
    assert stats["au"]["present_fraction"]["AU12"] == 1.0
    assert 0 < stats["expression"]["uncertainty"] <= 1
