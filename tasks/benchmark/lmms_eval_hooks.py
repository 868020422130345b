"""FEAB as an lmms-eval task: the hooks its YAML names (`!function utils.<name>`).

`seke export-benchmark --lmms-eval DIR` copies this file to DIR/utils.py beside
feab.yaml and the saved dataset, so `lmms_eval --include_path DIR --tasks feab`
asks each FEAB image the benchmark question and scores the answers with seke's
own parser and metrics: the scores are `seke benchmark`'s for the same answers
(seke must be importable where lmms-eval runs).

lmms-eval calls `process_results(doc, results)` once per image and hands each
metric's per-image values to that metric's `aggregation`; FEAB's metrics are
over the whole set (UAR, per-AU F1), so every metric's per-image value is the
same (prediction, reference) pair and each aggregation scores the whole list.
"""

from __future__ import annotations

import json
import math
from typing import Any

from models.answers import bounded_raw_text
from models.labels import FaceLabels
from tasks.benchmark.metrics import BenchmarkScores, score
from tasks.benchmark.parse import parse_answer

#: The metrics the task reports, each a field of BenchmarkScores, and whether higher is better.
METRICS: dict[str, bool] = {
    "expression_accuracy": True,
    "uar": True,
    "au_f1_mean": True,
    "valence_mae": False,
    "arousal_mae": False,
}


def doc_to_visual(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The benchmark question, as exported (the prompt version is in the dataset and the task's metadata)."""
    return doc["question"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    """Parse the answer as `seke benchmark` does; an unparseable answer is a None prediction (counted, never dropped)."""
    parsed = parse_answer(bounded_raw_text(results[0] if results else ""))
    item = {
        "image_id": doc["image_id"],
        "prediction": parsed.labels.model_dump(mode="json") if parsed.method != "none" else None,
        "reference": json.loads(doc["reference"]),
    }
    return {metric: item for metric in METRICS}


def feab_scores(items: list[dict[str, Any]]) -> BenchmarkScores:
    """Score per-image items in image order, as `seke benchmark` scores its run."""
    items = sorted(items, key=lambda item: item["image_id"])
    predictions = [None if i["prediction"] is None else FaceLabels.model_validate(i["prediction"]) for i in items]
    return score(predictions, [FaceLabels.model_validate(i["reference"]) for i in items])


def _aggregate(metric: str, items: list[dict[str, Any]]) -> float:
    value = getattr(feab_scores(items), metric)
    # lmms-eval tabulates numbers: a metric with no labelled reference (or no prediction, for MAE) is NaN.
    return math.nan if value is None else value


def agg_expression_accuracy(items: list[dict[str, Any]]) -> float:
    return _aggregate("expression_accuracy", items)


def agg_uar(items: list[dict[str, Any]]) -> float:
    return _aggregate("uar", items)


def agg_au_f1_mean(items: list[dict[str, Any]]) -> float:
    return _aggregate("au_f1_mean", items)


def agg_valence_mae(items: list[dict[str, Any]]) -> float:
    return _aggregate("valence_mae", items)


def agg_arousal_mae(items: list[dict[str, Any]]) -> float:
    return _aggregate("arousal_mae", items)
