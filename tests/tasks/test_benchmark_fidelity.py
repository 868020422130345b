"""The zero-shot benchmark path over HTTP scores the simulator like the paper's GPT-4o row it is calibrated to."""

from __future__ import annotations

import math
import random
from pathlib import Path

from core.store import LocalStore
from simulator.server import SimulatorConfig, running_simulator
from tasks.benchmark.metrics import score
from tasks.benchmark.paper import paper_scores, table2_au_mean
from tasks.benchmark.parse import parse_answer
from tasks.benchmark.runner import ENDPOINT_TEMPERATURE, FeabItem, answer_with_endpoint
from tasks.vllm import VLLMClient, VLLMConfig
from tests.simulator.test_simulator import face_png, random_labels

N = 400


def test_zero_shot_endpoint_benchmark_matches_the_gpt4o_row_within_sampling_error(tmp_path: Path) -> None:
    rng = random.Random(61)
    truths = [random_labels(rng) for _ in range(N)]
    store = LocalStore(tmp_path / "store")
    items = []
    for i, truth in enumerate(truths):
        store.put_bytes(f"images/{i}.png", face_png(truth, shade=i))
        items.append(FeabItem(i, f"images/{i}.png", truth))
    answers: dict[int, str] = {}
    with running_simulator(SimulatorConfig()) as base_url:
        config = VLLMConfig(
            base_url=base_url, model="seke-simulator", structured_output=False,
            requests_per_minute=10**7, tokens_per_minute=10**10,
        )  # fmt: skip
        with VLLMClient(config) as client:
            answer_with_endpoint(
                items, store=store, client=client, concurrency=8, on_answer=lambda item, text: answers.__setitem__(item.image_id, text)
            )
    parsed = [parse_answer(answers[i]) for i in range(N)]
    ours = score([p.labels if p.method != "none" else None for p in parsed], truths)
    paper = paper_scores("GPT-4o")
    assert ENDPOINT_TEMPERATURE == 1.0  # the temperature the row was measured (and the simulator calibrated) at
    # Expression accuracy is a binomial proportion: 3 standard errors at the paper's rate.
    p = paper.expression_accuracy
    tolerance = 3 * math.sqrt(p * (1 - p) / N)
    print(f"accuracy {ours.expression_accuracy:.3f} vs {p:.3f} ± {tolerance:.3f}; AU F1 (14) {table2_au_mean(ours):.3f}")
    assert abs(ours.expression_accuracy - p) <= tolerance
    # Mean F1 over 14 AUs with few positives each varies more than a proportion: the calibration test's band.
    assert abs(table2_au_mean(ours) - paper.au_f1_mean) <= 0.09
    assert abs(ours.valence_mae - paper.valence_mae) <= 0.08 and abs(ours.arousal_mae - paper.arousal_mae) <= 0.08
