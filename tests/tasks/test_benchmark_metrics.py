"""Benchmark metrics against scikit-learn / rouge-score, `score` conventions, paper tables, charts."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, recall_score
from sklearn.metrics import mean_absolute_error as sk_mae

from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels
from tasks.benchmark.charts import au_f1_chart, radar_chart
from tasks.benchmark.metrics import (
    accuracy,
    f1_positive,
    mean_absolute_error,
    rege,
    rouge_l,
    score,
    unweighted_average_recall,
    weighted_average_recall,
)
from tasks.benchmark.paper import TABLE2, TABLE2_AUS, TABLE4, paper_scores, table2_markdown, table_rows

SEEDS = range(5)
WORDS = "the face shows a broad smile with raised cheeks and parted lips brows lowered eyes wide".split()


def _classes(rng: random.Random, n: int, missing: float) -> tuple[list[str | None], list[str]]:
    reference = [rng.choice(EXPRESSIONS[: rng.randint(2, 8)]) for _ in range(n)]
    predicted = [None if rng.random() < missing else rng.choice(EXPRESSIONS) for _ in range(n)]
    return predicted, reference


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_equal_sklearn(seed: int) -> None:
    rng = random.Random(seed)
    predicted, reference = _classes(rng, 200, missing=0.1)
    as_sklearn = [p or "<missing>" for p in predicted]  # a missing answer is a wrong answer
    assert accuracy(predicted, reference) == pytest.approx(accuracy_score(reference, as_sklearn))
    assert unweighted_average_recall(predicted, reference) == pytest.approx(
        recall_score(reference, as_sklearn, labels=sorted(set(reference)), average="macro")
    )
    assert weighted_average_recall(predicted, reference) == pytest.approx(
        recall_score(reference, as_sklearn, average="weighted", zero_division=0)
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_positive_equals_sklearn(seed: int) -> None:
    rng = random.Random(seed)
    rate = rng.uniform(0.05, 0.6)
    reference = [rng.random() < rate for _ in range(300)]
    predicted = [None if rng.random() < 0.1 else rng.random() < rate for _ in range(300)]
    as_sklearn = [int(not r) if p is None else int(p) for p, r in zip(predicted, reference)]
    expected = f1_score([int(r) for r in reference], as_sklearn, pos_label=1, zero_division=0)
    assert f1_positive(predicted, reference) == pytest.approx(expected)


def test_f1_positive_without_true_positive_is_zero() -> None:
    assert f1_positive([False, False, True], [True, False, False]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_mae_equals_sklearn_on_answered_pairs(seed: int) -> None:
    rng = random.Random(seed)
    reference = [rng.uniform(-1, 1) for _ in range(150)]
    predicted = [None if rng.random() < 0.2 else rng.uniform(-1, 1) for _ in range(150)]
    answered = [(p, r) for p, r in zip(predicted, reference) if p is not None]
    expected = sk_mae([r for _, r in answered], [p for p, _ in answered])
    assert mean_absolute_error(predicted, reference) == pytest.approx(expected)
    assert mean_absolute_error([None, None], [0.1, 0.2]) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_rouge_l_equals_rouge_score(seed: int) -> None:
    rng = random.Random(seed)
    generated = [" ".join(rng.choices(WORDS, k=rng.randint(3, 15))) for _ in range(20)]
    reference = [" ".join(rng.choices(WORDS, k=rng.randint(3, 15))) for _ in range(20)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = sum(scorer.score(r, g)["rougeL"].fmeasure for g, r in zip(generated, reference)) / 20
    assert rouge_l(generated, reference) == pytest.approx(expected)


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        accuracy(["anger", "fear"], ["anger"])
    with pytest.raises(ValueError, match="no references"):
        mean_absolute_error([], [])


def _random_labels(rng: random.Random, sparse: bool) -> FaceLabels:
    """Some references lack tasks, as FEAB images carry only their source's labels."""
    keep = (lambda: rng.random() < 0.7) if sparse else (lambda: True)
    return FaceLabels(
        expression=rng.choice(EXPRESSIONS) if keep() else None,
        valence=round(rng.uniform(-1, 1), 2) if keep() else None,
        arousal=round(rng.uniform(-1, 1), 2) if keep() else None,
        aus={au: rng.random() < 0.3 for au in ACTION_UNITS} if keep() else {},
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_score_matches_sklearn_per_task(seed: int) -> None:
    rng = random.Random(seed)
    references = [_random_labels(rng, sparse=True) for _ in range(120)]
    predictions = [None if rng.random() < 0.1 else _random_labels(rng, sparse=True) for _ in range(120)]
    result = score(predictions, references)
    preds = [p or FaceLabels() for p in predictions]

    exp = [(p.expression or "<missing>", r.expression) for p, r in zip(preds, references) if r.expression]
    assert result.expression_accuracy == pytest.approx(accuracy_score([r for _, r in exp], [p for p, _ in exp]))
    assert result.war == result.expression_accuracy
    assert result.coverage["expression"].labelled == len(exp)
    assert result.coverage["expression"].missing == sum(p == "<missing>" for p, _ in exp)

    va = [(p.valence, r.valence) for p, r in zip(preds, references) if r.valence is not None and p.valence is not None]
    assert result.valence_mae == pytest.approx(sk_mae([r for _, r in va], [p for p, _ in va]))
    assert result.n == 120 and result.n_unparseable == sum(p is None for p in predictions)

    for au in ACTION_UNITS:
        pairs = [(p.aus.get(au), r.aus[au]) for p, r in zip(preds, references) if au in r.aus]
        if not any(r for _, r in pairs):
            assert au not in result.au_f1
            continue
        y_pred = [int(not r) if p is None else int(p) for p, r in pairs]
        assert result.au_f1[au] == pytest.approx(f1_score([int(r) for _, r in pairs], y_pred, zero_division=0))
    assert result.au_f1_mean == pytest.approx(sum(result.au_f1.values()) / len(result.au_f1))


def test_score_counts_unparseable_and_skips_unlabelled_tasks() -> None:
    references = [
        FaceLabels(expression="happiness", aus={"AU6": True, "AU12": True, "AU4": False}),
        FaceLabels(expression="anger", valence=-0.6, arousal=0.6),
        FaceLabels(valence=0.5, arousal=0.2, aus={"AU6": False, "AU12": True, "AU4": False}),
    ]
    predictions = [
        FaceLabels(expression="happiness", aus={"AU6": True, "AU12": True, "AU4": True}),
        None,
        FaceLabels(valence=0.3),
    ]
    result = score(predictions, references)
    assert result.n_unparseable == 1
    # Complete: expression, valence and arousal, all 17 AUs — none of these predictions is.
    assert result.n_complete == 0
    full = FaceLabels(expression="anger", valence=0.1, arousal=0.2, aus=dict.fromkeys(ACTION_UNITS, False))
    assert score([full, *predictions[1:]], references).n_complete == 1
    assert result.expression_accuracy == 0.5 and result.uar == 0.5
    assert result.valence_mae == pytest.approx(0.2) and result.arousal_mae is None
    assert result.coverage["valence"].missing == 1 and result.coverage["arousal"].missing == 2
    # AU6: TP + missing on a negative (FP); AU12: TP + missing on a positive (FN);
    # AU4 has no positive reference, so no F1.
    assert result.au_f1 == {"AU6": pytest.approx(2 / 3), "AU12": pytest.approx(2 / 3)}
    assert result.coverage["au"].labelled == 6 and result.coverage["au"].missing == 3


def test_rege_is_recognition_plus_rouge() -> None:
    references = [FaceLabels(expression="sadness", aus={"AU1": True}), FaceLabels(expression="fear", aus={"AU1": False})]
    predictions = [FaceLabels(expression="sadness", aus={"AU1": True}), FaceLabels(expression="anger", aus={"AU1": False})]
    texts = ["the person looks sad with raised inner brows", "the person looks angry"]
    refs = ["a sad face with raised inner brows", "a fearful face with wide eyes"]
    result = score(predictions, references, generated_texts=texts, reference_texts=refs)
    assert result.rouge_l == pytest.approx(rouge_l(texts, refs))
    assert result.rege_expression == pytest.approx(rege(0.5, result.rouge_l))
    assert result.rege_au == pytest.approx(1.0 + result.rouge_l)
    with pytest.raises(ValueError, match="both"):
        score(predictions, references, generated_texts=texts)


def test_paper_tables_are_consistent() -> None:
    # "All" is the mean of the 14 printed AU columns (up to the paper's rounding).
    for row in TABLE2:
        assert list(row.au_f1) == list(TABLE2_AUS)
        assert sum(row.au_f1.values()) / len(row.au_f1) == pytest.approx(row.au_f1_mean, abs=0.06)
    # Table 4's full method is Table 2's SEKE row.
    assert TABLE4[-1].expression_accuracy == pytest.approx(100 * paper_scores("SEKE").expression_accuracy)
    assert TABLE4[-1].au_f1_mean == pytest.approx(100 * paper_scores("SEKE").au_f1_mean)
    with pytest.raises(ValueError, match="GPT-4o"):
        paper_scores("GPT-5")


def test_table2_markdown_has_our_rows_then_the_papers() -> None:
    ours = score([FaceLabels(expression="anger", aus={"AU5": True})], [FaceLabels(expression="anger", aus={"AU5": True})])
    markdown = table2_markdown([("our model", ours)])
    lines = markdown.splitlines()
    assert lines[0].startswith("| Method | EXP Acc (%) | AU1 |") and "| AU5 |" in lines[0]
    assert lines[2].startswith("| our model | 100.0 |")
    assert "| SEKE (paper) | 69.4 | 55.1 |" in markdown and "| GPT-4o* (paper) | 61.1 |" in markdown
    assert "0.231 |" in markdown and "not results of this code" in markdown
    assert "(paper)" not in table2_markdown([("our model", ours)], include_paper=False)
    rows = table_rows([("our model", ours)])
    assert len(rows) == 1 + len(TABLE2) and rows[0]["Valence MAE"] is None and rows[0]["AU5"] == 100.0


def test_charts_write_pngs(tmp_path) -> None:
    models = [("ours", paper_scores("GPT-4o")), ("SEKE (paper)", paper_scores("SEKE"))]
    for path in (au_f1_chart(models, tmp_path / "au.png"), radar_chart(models, tmp_path / "charts" / "radar.png")):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
