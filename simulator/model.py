"""What the offline simulator "sees" and answers: pure functions, no HTTP.

It is a rehearsal tool, not a model: it reads the ground truth embedded in
synthetic images (tasks/groundtruth.py) and corrupts it with noise calibrated
to the GPT-4o row of the SEKE paper's Table 2 (expression accuracy 61.1 %,
mean AU F1 29.0 %, valence/arousal MAE 0.342/0.291), measured on single
samples at temperature 1 over synthetic label sets (tests/simulator/test_simulator.py).

Per image, a deterministic *belief* (from the image's sha256): expression
logits, a valence/arousal point, AU logits. Per sample, noise scaled by the
temperature: Gumbel noise on the expression logits (= softmax(logits/T)
sampling), logistic noise on the AU logits (= Bernoulli(sigmoid(logit/T))),
Gaussian noise on VA. At temperature 0 answers are the belief itself, stable,
and right more often than one sample at 1 (expression ~74 % against ~62 %): a
score is comparable with the paper's row only at T=1, the temperature the
zero-shot benchmark asks at (tasks/benchmark/runner.py ENDPOINT_TEMPERATURE).

With prior knowledge in the prompt (known human labels), the belief is pulled
toward what models/knowledge.py says the known labels imply, so missing
descriptions agree more with the truth (direction of the paper's Table 4).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from models.knowledge import AU_DESCRIPTIONS, EXPRESSION_AUS, EXPRESSION_VA
from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels, Task

# Classes GPT-4o-like models mix up (negative emotions among themselves, mild ones with neutral).
CONFUSIONS: Mapping[str, tuple[str, ...]] = {
    "neutral": ("sadness", "contempt"),
    "happiness": ("neutral", "contempt", "surprise"),
    "sadness": ("neutral", "fear", "disgust"),
    "surprise": ("fear", "happiness"),
    "fear": ("surprise", "sadness"),
    "disgust": ("anger", "contempt", "sadness"),
    "anger": ("disgust", "sadness"),
    "contempt": ("neutral", "disgust", "happiness"),
}
# Logits are large because a chat model at temperature 1 is still fairly sure of itself: with these, one
# sample at T=1 is right ~62 % of the time and the belief (T=0, or the mode of many samples) ~72 %.
EXPRESSION_TRUE_LOGIT = 5.25
EXPRESSION_CONFUSION_LOGIT = 2.0
EXPRESSION_IMAGE_NOISE = 2.0

# Belief recall / false-alarm rate per AU at temperature 0, shaped after Table 2's GPT-4o per-AU F1
# (strong on AU4/6/12, near-blind to AU7/14/23; AU5/9/20 are not in the table: middling values).
AU_DETECTION: Mapping[str, tuple[float, float]] = {
    "AU1": (0.28, 0.12), "AU2": (0.26, 0.10), "AU4": (0.70, 0.10), "AU5": (0.18, 0.08),
    "AU6": (0.75, 0.08), "AU7": (0.05, 0.06), "AU9": (0.15, 0.05), "AU10": (0.08, 0.06),
    "AU12": (0.80, 0.06), "AU14": (0.02, 0.05), "AU15": (0.08, 0.06), "AU17": (0.18, 0.08),
    "AU20": (0.12, 0.05), "AU23": (0.015, 0.04), "AU24": (0.18, 0.05), "AU25": (0.35, 0.10),
    "AU26": (0.15, 0.08),
}  # fmt: skip
AU_IMAGE_NOISE = 3.0  # large next to the logistic sample noise (sd 1.8 at T=1), so samples mostly agree
VALENCE_IMAGE_NOISE = 0.5
AROUSAL_IMAGE_NOISE = 0.4
VA_SAMPLE_NOISE = 0.12  # per sample, times the temperature

# Pull toward the prior knowledge when the prompt gives known labels (see module docstring).
PRIOR_EXPRESSION_WEIGHT = 2.0
PRIOR_VA_WEIGHT = 0.45
PRIOR_AU_WEIGHT = 1.2


@dataclass(frozen=True)
class Belief:
    expression_logits: dict[str, float]
    valence: float
    arousal: float
    au_logits: dict[str, float]
    grounded: bool  # False: the image carries no ground truth, so answers come from the prompt alone


def _clip(value: float) -> float:
    return max(-1.0, min(1.0, value))


def seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def perceive(truth: FaceLabels | None, image_key: str) -> Belief:
    """The simulator's deterministic view of one image; a neutral guess without complete ground truth."""
    if truth is None or not all(truth.has(t) for t in Task):
        neutral = {c: 1.0 if c == "neutral" else 0.0 for c in EXPRESSIONS}
        return Belief(neutral, 0.0, 0.0, dict.fromkeys(ACTION_UNITS, -2.0), grounded=False)
    rng = seeded_rng("belief", image_key)
    expression = str(truth.expression)
    logits = {c: EXPRESSION_IMAGE_NOISE * rng.gauss(0, 1) for c in EXPRESSIONS}
    logits[expression] += EXPRESSION_TRUE_LOGIT
    for confused in CONFUSIONS[expression]:
        logits[confused] += EXPRESSION_CONFUSION_LOGIT
    valence = _clip(float(truth.valence) + VALENCE_IMAGE_NOISE * rng.gauss(0, 1))  # type: ignore[arg-type]
    arousal = _clip(float(truth.arousal) + AROUSAL_IMAGE_NOISE * rng.gauss(0, 1))  # type: ignore[arg-type]
    au_logits = {}
    for au in ACTION_UNITS:
        recall, false_alarm = AU_DETECTION[au]
        # Threshold at 0 of mean + N(0, s) detects with P = Φ(mean / s), so mean = s·Φ⁻¹(rate).
        mean = AU_IMAGE_NOISE * NormalDist().inv_cdf(recall if truth.aus[au] else false_alarm)
        au_logits[au] = mean + AU_IMAGE_NOISE * rng.gauss(0, 1)
    return Belief(logits, valence, arousal, au_logits, grounded=True)


def _expression_scores(known: FaceLabels) -> dict[str, float]:
    """How well each expression fits the known AUs and VA (EMFACS prototypes, Russell's circumplex)."""
    scores = dict.fromkeys(EXPRESSIONS, 0.0)
    known_aus = {au for au, on in known.aus.items() if on}
    if known.aus:
        for expression in EXPRESSIONS:
            prototype = set(EXPRESSION_AUS[expression])
            if not prototype:
                scores[expression] += 1.0 if not known_aus else 0.0
            else:
                scores[expression] += len(prototype & known_aus) / len(prototype | known_aus)
    if known.valence is not None and known.arousal is not None:
        for expression, (v, a) in EXPRESSION_VA.items():
            scores[expression] += 1.0 - math.dist((v, a), (known.valence, known.arousal))
    return scores


def _implied_expression(known: FaceLabels) -> str | None:
    if known.expression is not None:
        return known.expression
    scores = _expression_scores(known)
    return max(scores, key=scores.__getitem__) if any(scores.values()) else None


def with_prior(belief: Belief, known: FaceLabels) -> Belief:
    """Pull the belief toward what the known labels imply; known AUs are kept as given.

    Without ground truth the answer is the knowledge itself: VA at the implied
    expression's circumplex point, AUs its EMFACS prototype.
    """
    scores = _expression_scores(known)
    logits = {c: belief.expression_logits[c] + PRIOR_EXPRESSION_WEIGHT * scores[c] for c in EXPRESSIONS}
    implied = _implied_expression(known)
    valence, arousal, au_logits = belief.valence, belief.arousal, dict(belief.au_logits)
    if implied is not None:
        weight = 1.0 if known.expression is not None else 0.5  # an inferred expression is weaker evidence
        pull = PRIOR_VA_WEIGHT * weight if belief.grounded else 1.0
        proto_v, proto_a = EXPRESSION_VA[implied]
        valence = (1 - pull) * valence + pull * proto_v
        arousal = (1 - pull) * arousal + pull * proto_a
        prototype = set(EXPRESSION_AUS[implied])
        for au in ACTION_UNITS:
            if belief.grounded:
                au_logits[au] += PRIOR_AU_WEIGHT * weight * (1.0 if au in prototype else -0.5)
            else:
                au_logits[au] = 2.0 if au in prototype else -2.0
    for au, on in known.aus.items():
        au_logits[au] = 5.0 if on else -5.0
    return Belief(logits, valence, arousal, au_logits, belief.grounded)


def sample_answer(belief: Belief, tasks: Sequence[Task], temperature: float, rng: random.Random) -> dict[str, Any]:
    """One sampled answer with exactly the requested tasks."""
    answer: dict[str, Any] = {}
    t = max(0.0, temperature)
    if Task.EXPRESSION in tasks:
        # Gumbel-max: argmax(logit + T·Gumbel) ~ softmax(logit / T).
        noisy = {c: l + t * -math.log(-math.log(rng.random() or 1e-12)) for c, l in belief.expression_logits.items()}
        answer["expression"] = max(noisy, key=noisy.__getitem__)
    if Task.VA in tasks:
        answer["valence"] = round(_clip(belief.valence + t * VA_SAMPLE_NOISE * rng.gauss(0, 1)), 2)
        answer["arousal"] = round(_clip(belief.arousal + t * VA_SAMPLE_NOISE * rng.gauss(0, 1)), 2)
    if Task.AU in tasks:
        aus = {}
        for au in ACTION_UNITS:
            u = min(max(rng.random(), 1e-12), 1 - 1e-12)
            aus[au] = belief.au_logits[au] + t * math.log(u / (1 - u)) > 0  # logistic noise
        answer["aus"] = aus
    return answer


def summarise(
    belief: Belief, known: FaceLabels, samples: Sequence[Mapping[str, Any]], tasks: Sequence[Task]
) -> dict[str, Any]:
    """Final labels: mode / mean / majority of the samples; ties go to the belief (a second look)."""
    final: dict[str, Any] = {}
    if Task.EXPRESSION in tasks:
        counts = Counter(s["expression"] for s in samples if "expression" in s)
        if counts:
            top = max(counts.values())
            tied = [c for c in EXPRESSIONS if counts.get(c) == top]
            final["expression"] = max(tied, key=belief.expression_logits.__getitem__)
        else:
            final["expression"] = max(belief.expression_logits, key=belief.expression_logits.__getitem__)
    if Task.VA in tasks:
        for key, fallback in (("valence", belief.valence), ("arousal", belief.arousal)):
            values = [float(s[key]) for s in samples if key in s]
            final[key] = round(sum(values) / len(values), 2) if values else round(fallback, 2)
    if Task.AU in tasks:
        votes = [s["aus"] for s in samples if isinstance(s.get("aus"), Mapping)]
        aus = {}
        for au in ACTION_UNITS:
            yes = sum(1 for v in votes if v.get(au))
            aus[au] = yes * 2 > len(votes) or (yes * 2 == len(votes) and belief.au_logits[au] > 0)
        final["aus"] = aus
    merged = FaceLabels.model_validate({**known.model_dump(exclude_none=True), **final})
    final["description"] = describe(merged)
    return final


def _level(value: float, low: str, mid: str, high: str) -> str:
    return low if value < -0.2 else high if value > 0.2 else mid


def describe(labels: FaceLabels) -> str:
    """A reasoning that links the AUs, the expression and valence/arousal (what the summary must give)."""
    sentences = []
    active = [au for au in ACTION_UNITS if labels.aus.get(au)]
    expression = labels.expression
    if active:
        named = ", ".join(f"{au} ({AU_DESCRIPTIONS[au]})" for au in active)
        sentences.append(f"The face shows {named}.")
    else:
        sentences.append("No action unit is clearly active; the facial muscles look relaxed.")
    if expression is not None:
        prototype = set(EXPRESSION_AUS[expression])
        shared = [au for au in active if au in prototype]
        if shared:
            sentences.append(f"{', '.join(shared)} belong to the typical pattern of {expression}, so the expression reads as {expression}.")
        elif expression == "neutral":
            sentences.append("Without a characteristic action-unit pattern the expression reads as neutral.")
        else:
            sentences.append(f"The expression reads as {expression}, though its typical action units are only weakly visible.")
    if labels.valence is not None and labels.arousal is not None:
        mood = _level(labels.valence, "unpleasant", "neither pleasant nor unpleasant", "pleasant")
        energy = _level(labels.arousal, "calm", "moderately activated", "activated")
        fit = f", consistent with {expression} on Russell's circumplex" if expression else ""
        sentences.append(
            f"Valence {labels.valence:.2f} and arousal {labels.arousal:.2f} describe a {mood}, {energy} state{fit}."
        )
    return " ".join(sentences)
