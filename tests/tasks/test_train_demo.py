"""The demo's train → benchmark loop: after the demo's fine-tune, answers carry all three descriptions.

Demo-sized data (177 examples, as `seke demo` exports) shaped like the
simulator's answers (opening, the three descriptions, the reasoning), the
tiny model and DEMO_TRAIN_CONFIG; then the FEAB question on unseen faces,
read by the benchmark parser. Quality is not the point: the loop is.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.labels import Task  # noqa: E402
from simulator.model import describe  # noqa: E402
from tasks.benchmark.parse import parse_answer  # noqa: E402
from tasks.benchmark.prompt import benchmark_prompt  # noqa: E402
from tasks.prompts import choose_question, deterministic_answer  # noqa: E402
from tasks.synthetic import render, sample_labels  # noqa: E402
from tasks.train import DEMO_TRAIN_CONFIG  # noqa: E402
from tasks.train.finetune import TrainConfig, finetune  # noqa: E402
from tasks.train.generate import generate_answers, load_for_inference  # noqa: E402
from tasks.train.tiny import build_tiny_llava  # noqa: E402

EXAMPLES, HELD_OUT = 177, 20
OPENINGS = ("", "Here is my analysis of this face. ", "Looking closely at the face: ")  # the simulator's rewrite


def _demo_like_export(export_dir: Path, rng: random.Random) -> list[str]:
    (export_dir / "images").mkdir(parents=True)
    lines, corpus = [], []
    for index in range(EXAMPLES):
        labels = sample_labels(rng)
        image = render(labels, f"s{index % 40}", rng)
        name = f"images/{hashlib.sha256(image).hexdigest()}.png"
        (export_dir / name).write_bytes(image)
        question = choose_question(index)[1]
        answer = rng.choice(OPENINGS) + deterministic_answer(labels, describe(labels))
        corpus += [question, answer]
        conversation = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        lines.append(json.dumps({"id": f"demo-{index}", "image": name, "conversations": conversation}))
    (export_dir / "feid.jsonl").write_text("\n".join(lines) + "\n")
    return corpus


@pytest.mark.slow
def test_demo_fine_tune_answers_feab_with_all_three_descriptions(tmp_path):
    rng = random.Random(7)
    corpus = _demo_like_export(tmp_path / "export", rng)
    base = build_tiny_llava(tmp_path / "base", corpus, seed=0)
    result = finetune(TrainConfig(**DEMO_TRAIN_CONFIG), tmp_path / "export", base, tmp_path / "run")
    model, processor = load_for_inference(result.final_dir)
    faces = [render(sample_labels(rng), f"unseen{i}", rng) for i in range(HELD_OUT)]
    # max_new_tokens as the benchmark flow's default.
    answers = generate_answers(model, processor, faces, [benchmark_prompt().text] * HELD_OUT, max_new_tokens=200)
    complete = [all(parse_answer(answer).labels.has(task) for task in Task) for answer in answers]
    assert sum(complete) >= 0.9 * HELD_OUT, answers[:3]
