"""Uncertainty-aware Monte Carlo sampling (SEKE paper, Algorithm 1, Eq. 2-4), as pure functions.

For image n the tasks i are the descriptions it lacks. Each valid sample s is
encoded as f(s): a one-hot over the 8 expressions, the valence and arousal
values, a 0/1 per action unit. The uncertainty of a task is the Monte Carlo
variance of Eq. 3, (1/S)Σf² − ((1/S)Σf)², summed over the components of f
(expression), or averaged over its parts (VA: the two values; AU: the 17 AUs),
and normalised to [0, 1] by its largest possible value:

- expression: Σ_k p̂_k(1 − p̂_k) = 1 − Σ_k p̂_k², at most 1 − 1/8;
- valence, arousal: population variance of a value in [−1, 1], at most 1;
- each AU: p̂(1 − p̂), at most 0.25.

With the "attainable" normaliser the largest value reachable with S_n samples
is used instead (an odd S_n cannot split 50/50), so samples that disagree as
much as S_n samples can give Ũ = 1 at every step.

Sampling starts with S_n = 2; while S_n < N, p_acc = ½ + ½·Ũ_max (Eq. 4) and
one more sample is drawn when p ~ U[0, 1] falls below p_acc.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from models.labels import ACTION_UNITS, EXPRESSIONS, Task
from models.vocab import Decision

#: Largest value of each task's un-normalised uncertainty (see module docstring).
MAX_UNCERTAINTY = {Task.EXPRESSION: 1.0 - 1.0 / len(EXPRESSIONS), Task.VA: 1.0, Task.AU: 0.25}

Sample = Mapping[str, object]  # a validated answer: expression / valence / arousal / aus


class UAMCConfig(BaseModel):
    """Sampling policy of a run (recorded with the run)."""

    enabled: bool = Field(default=True, description="Off: one sample per image (the paper's 'no SV-UAMC' ablation).")
    start_samples: int = Field(default=2, ge=1, description="Valid samples drawn before the first decision (Alg. 1 l.2).")
    max_samples: int = Field(default=5, ge=1, description="N: the most valid samples per image.")
    max_invalid: int = Field(default=3, ge=1, description="Invalid answers that end an image as failed.")
    normaliser: Literal["fixed", "attainable"] = Field(
        default="fixed", description="fixed: divide by the task's largest variance; attainable: by the largest reachable with S_n samples."
    )
    aggregation: Literal["max"] = Field(default="max", description="How task uncertainties combine (Alg. 1 l.6).")


def _fraction_present(samples: Sequence[Sample]) -> np.ndarray:
    """p̂ per AU: share of samples in which the AU is present, shape (17,)."""
    matrix = np.array([[bool(s["aus"][au]) for au in ACTION_UNITS] for s in samples], dtype=float)  # type: ignore[index]
    return matrix.mean(axis=0)


def raw_uncertainty(task: Task, samples: Sequence[Sample]) -> float:
    """Eq. 3 for one task over the valid samples so far (population form)."""
    if task is Task.EXPRESSION:
        counts = Counter(s["expression"] for s in samples)
        p = np.array([counts[e] / len(samples) for e in EXPRESSIONS])
        return float(1.0 - np.sum(p**2))
    if task is Task.VA:
        values = np.array([[s["valence"], s["arousal"]] for s in samples], dtype=float)
        return float(values.var(axis=0).mean())
    p = _fraction_present(samples)
    return float(np.mean(p * (1.0 - p)))


def attainable_maximum(task: Task, n: int) -> float:
    """Largest un-normalised uncertainty that n samples can show (n ≥ 2)."""
    if task is Task.EXPRESSION:
        # Spread as evenly as possible over the 8 classes.
        q, r = divmod(n, len(EXPRESSIONS))
        return 1.0 - (r * (q + 1) ** 2 + (len(EXPRESSIONS) - r) * q**2) / n**2
    # Two-point split as close to 50/50 as n allows: variance 1 - (1/n)^2 for odd n.
    balance = 1.0 - ((n % 2) / n) ** 2
    return MAX_UNCERTAINTY[task] * balance


def normalised_uncertainties(
    tasks: Sequence[Task], samples: Sequence[Sample], normaliser: str = "fixed"
) -> dict[Task, float]:
    """Ũ per task in [0, 1]."""
    result = {}
    for task in tasks:
        maximum = MAX_UNCERTAINTY[task] if normaliser == "fixed" or len(samples) < 2 else attainable_maximum(task, len(samples))
        result[task] = min(1.0, raw_uncertainty(task, samples) / maximum)
    return result


@dataclass(frozen=True)
class Step:
    """One decision of Algorithm 1 (lines 4-13), as persisted in uamc_steps."""

    step: int
    valid_samples: int
    uncertainties: dict[Task, float]
    u_max: float
    p_acc: float | None
    p: float | None
    decision: Decision


def image_rng(seed: int, run_name: str, image_sha256: str) -> np.random.Generator:
    """The decision stream of one image in one run: a resumed run redraws the same p values."""
    digest = hashlib.sha256(f"{seed}:{run_name}:{image_sha256}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def decide(step: int, tasks: Sequence[Task], samples: Sequence[Sample], config: UAMCConfig, rng: np.random.Generator) -> Step:
    """Whether to draw one more sample, given the valid samples so far."""
    uncertainties = normalised_uncertainties(tasks, samples, config.normaliser)
    u_max = max(uncertainties.values(), default=0.0)
    if len(samples) >= config.max_samples:
        return Step(step, len(samples), uncertainties, u_max, None, None, Decision.MAX_REACHED)
    p_acc = 0.5 + 0.5 * u_max  # Eq. 4
    p = float(rng.random())
    return Step(step, len(samples), uncertainties, u_max, p_acc, p, Decision.SAMPLE if p < p_acc else Decision.STOP)


def initial_samples(config: UAMCConfig) -> int:
    """Valid samples to draw before any decision: 1 with UAMC off, else the start count (capped by N)."""
    return 1 if not config.enabled else min(config.start_samples, config.max_samples)


def task_statistics(
    tasks: Sequence[Task], samples: Sequence[Sample], normaliser: str = "fixed"
) -> dict[str, dict[str, object]]:
    """Per-task mean/mode and normalised uncertainty, as given to the summary prompt.

    `normaliser` must be the run's (UAMCConfig.normaliser): the summary sees the uncertainty the steps stored.
    """
    uncertainties = normalised_uncertainties(tasks, samples, normaliser)
    stats: dict[str, dict[str, object]] = {}
    for task in tasks:
        entry: dict[str, object] = {"uncertainty": round(uncertainties[task], 4)}
        if task is Task.EXPRESSION:
            counts = Counter(s["expression"] for s in samples)
            entry["mode"] = counts.most_common(1)[0][0]
            entry["distribution"] = {e: counts[e] / len(samples) for e in EXPRESSIONS if counts[e]}
        elif task is Task.VA:
            entry["valence_mean"] = round(float(np.mean([s["valence"] for s in samples])), 4)
            entry["arousal_mean"] = round(float(np.mean([s["arousal"] for s in samples])), 4)
        else:
            entry["present_fraction"] = {
                au: round(float(p), 4) for au, p in zip(ACTION_UNITS, _fraction_present(samples), strict=True)
            }
        stats[task.value] = entry
    return stats
