"""Synthetic faces: labels follow the emotion knowledge, every AU is visible, subjects are stable."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models.knowledge import EXPRESSION_AUS, EXPRESSION_VA
from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels
from tasks.groundtruth import read_ground_truth
from tasks.synthetic import SIZE, draw_face, identity_of, render, sample_labels


def neutral(**active: bool) -> FaceLabels:
    return FaceLabels(expression="neutral", valence=0.0, arousal=0.0, aus={au: active.get(au, False) for au in ACTION_UNITS})


def pixels(labels: FaceLabels, subject: str = "S001", seed: int = 0) -> np.ndarray:
    return np.asarray(draw_face(labels, subject, random.Random(seed)), dtype=np.int16)


def test_sample_labels_are_complete_and_in_range() -> None:
    rng = random.Random(0)
    for _ in range(200):
        labels = sample_labels(rng)
        assert labels.expression in EXPRESSIONS
        assert set(labels.aus) == set(ACTION_UNITS)
        assert -1.0 <= labels.valence <= 1.0 and -1.0 <= labels.arousal <= 1.0  # type: ignore[operator]


@pytest.mark.parametrize("expression", [e for e in EXPRESSIONS if e != "neutral"])
def test_sampled_aus_follow_the_prototype(expression: str) -> None:
    rng = random.Random(1)
    samples = [sample_labels(rng, expression) for _ in range(300)]  # type: ignore[arg-type]
    prototype = EXPRESSION_AUS[expression]
    for au in prototype:
        assert np.mean([s.aus[au] for s in samples]) > 0.8, au
    others = [au for au in ACTION_UNITS if au not in prototype and au not in ("AU10", "AU17", "AU25")]
    assert np.mean([s.aus[au] for s in samples for au in others]) < 0.1
    valence, arousal = EXPRESSION_VA[expression]
    assert abs(np.mean([s.valence for s in samples]) - valence) < 0.05
    assert abs(np.mean([s.arousal for s in samples]) - arousal) < 0.05


def test_drawing_is_deterministic_and_small() -> None:
    labels = sample_labels(random.Random(3))
    assert render(labels, "S001", random.Random(7)) == render(labels, "S001", random.Random(7))
    image = draw_face(labels, "S001", random.Random(7))
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"


@pytest.mark.parametrize("au", ACTION_UNITS)
def test_every_action_unit_changes_the_face(au: str) -> None:
    difference = np.abs(pixels(neutral(**{au: True})) - pixels(neutral())).sum(axis=2)
    assert (difference > 30).sum() >= 10, f"{au} is not visible"


def test_expressions_differ_from_each_other() -> None:
    faces = {e: pixels(neutral(**{au: True for au in EXPRESSION_AUS[e]})) for e in EXPRESSIONS}
    for a in EXPRESSIONS:
        for b in EXPRESSIONS:
            if a < b:
                assert np.abs(faces[a] - faces[b]).sum(axis=2).max() > 30, (a, b)


def test_contempt_smile_is_one_sided() -> None:
    # AU12 with the dimpler and no cheek raiser is contempt's one-sided smile.
    change = np.abs(pixels(neutral(AU12=True, AU14=True)) - pixels(neutral(AU14=True))).sum(axis=2)
    left, right = change[:, : SIZE // 2 - 4].sum(), change[:, SIZE // 2 + 4 :].sum()
    assert min(left, right) * 3 < max(left, right)


def test_subject_identity_is_stable_and_distinguishes_subjects() -> None:
    assert identity_of("S001") == identity_of("S001")
    identities = {identity_of(f"S{i:03d}") for i in range(20)}
    assert len(identities) == 20
    # The same subject with two expressions is closer than two subjects with the same one.
    happy = neutral(AU6=True, AU12=True)
    same = np.abs(pixels(neutral(), "S001") - pixels(happy, "S001")).mean()
    other = np.mean([np.abs(pixels(neutral(), "S001") - pixels(neutral(), f"S{i:03d}")).mean() for i in range(2, 12)])
    assert same < other


def test_ground_truth_is_embedded() -> None:
    labels = sample_labels(random.Random(5))
    for fmt in ("PNG", "JPEG"):
        assert read_ground_truth(render(labels, "x", random.Random(0), fmt)) == labels
