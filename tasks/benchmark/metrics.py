"""FEAB metrics as pure functions, and `score`, which applies them to a run.

Conventions (fixed here so every table means the same thing):

- Scores are fractions in [0, 1]; tables multiply by 100 as the papers do.
- A reference without a label for a task does not take part in that task
  (FEAB images carry only the labels their source has).
- Missing predictions (the answer was unparseable, or parsed but silent on a
  task) are counted per task in `Coverage.missing` and
  - count as wrong for classification: expression (accuracy, UAR, WAR) and
    each AU (a missing AU is scored as the opposite of its reference, i.e. a
    false negative on a positive reference, a false positive on a negative
    one), so a model cannot gain by not answering;
  - are excluded from valence / arousal MAE: there is no neutral "wrong"
    number, and a made-up fallback would mix guessing into the error. The
    coverage count sits beside the MAE so low coverage is visible; with no
    prediction at all the MAE is None (the paper's "N/A", Table 3).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field
from rouge_score import rouge_scorer

from models.labels import ACTION_UNITS, FaceLabels, Task


def _check_lengths(predicted: Sequence[object], reference: Sequence[object]) -> None:
    if len(predicted) != len(reference):
        raise ValueError(
            f"{len(predicted)} predictions for {len(reference)} references; pass one prediction "
            "(None when missing) per reference"
        )
    if not reference:
        raise ValueError("no references to score; filter out empty tasks before calling a metric")


def accuracy(predicted: Sequence[str | None], reference: Sequence[str]) -> float:
    """Fraction of exact matches (SEKE paper §4.2, "Accuracy"); None counts as wrong."""
    _check_lengths(predicted, reference)
    return sum(p == r for p, r in zip(predicted, reference, strict=True)) / len(reference)


def unweighted_average_recall(predicted: Sequence[str | None], reference: Sequence[str]) -> float:
    """UAR: mean over classes c of recall_c = |{i: r_i = c, p_i = c}| / |{i: r_i = c}|.

    EMO-LLaMA (Tab. 1) reports UAR/WAR as in the FER literature: the
    unweighted mean of per-class recalls. Only classes present in the
    references are averaged (a class never labelled has no recall); this is
    sklearn's recall_score(average="macro", labels=<reference classes>).
    """
    _check_lengths(predicted, reference)
    recalls = []
    for cls in sorted(set(reference)):
        hits = [p == cls for p, r in zip(predicted, reference, strict=True) if r == cls]
        recalls.append(sum(hits) / len(hits))
    return sum(recalls) / len(recalls)


def weighted_average_recall(predicted: Sequence[str | None], reference: Sequence[str]) -> float:
    """WAR: per-class recalls weighted by class frequency, Σ_c (n_c / N)·recall_c.

    The weights cancel the recall denominators, so WAR equals overall
    accuracy (EMO-LLaMA Tab. 1 reports it beside UAR for that reason).
    """
    return accuracy(predicted, reference)


def f1_positive(predicted: Sequence[bool | None], reference: Sequence[bool]) -> float:
    """F1 of the positive class, 2·p·r / (p + r) (SEKE paper §4.2), as 2TP / (2TP + FP + FN).

    The two forms are equal whenever p + r > 0; the count form is 0 instead of
    undefined when there is no true positive (sklearn's zero_division=0).
    None is scored as the opposite of the reference (see module docstring).
    """
    _check_lengths(predicted, reference)
    tp = fp = fn = 0
    for p, r in zip(predicted, reference, strict=True):
        said_present = (not r) if p is None else p
        tp += said_present and r
        fp += said_present and not r
        fn += (not said_present) and r
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def mean_absolute_error(predicted: Sequence[float | None], reference: Sequence[float]) -> float | None:
    """MAE = (1/n) Σ |p_i − r_i| over the pairs with a prediction; None if there is none.

    The SEKE paper (§4.2) names MAE but its sentence describes RMSE ("square
    root of the average squared differences"); we implement the metric it
    names, as its table header ("MAE") and EmoLA/Aff-Wild2 practice do.
    """
    _check_lengths(predicted, reference)
    pairs = [(p, r) for p, r in zip(predicted, reference, strict=True) if p is not None]
    if not pairs:
        return None
    return sum(abs(p - r) for p, r in pairs) / len(pairs)


def rouge_l(generated: Sequence[str], reference: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (Lin 2004) per pair, via rouge-score without stemming.

    EmoLA's S_ge is the mean ROUGE-L F over samples (its eval script uses the
    `rouge` package, also unstemmed; tokenisation differs slightly).
    """
    _check_lengths(generated, reference)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    total = sum(scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generated, reference, strict=True))
    return total / len(reference)


def rege(recognition: float, generation: float) -> float:
    """REGE = S_re + S_ge (FABA-Instruct/EmoLA §4: "computed by taking their sum").

    S_re is expression accuracy for the emotion task and the mean AU F1 for
    the AU task; S_ge is ROUGE. Both in [0, 1] here, so REGE is in [0, 2]
    (the paper prints both in %, REGE up to 200).
    """
    return recognition + generation


class Coverage(BaseModel):
    """How many references carry a task's label, and how many of those had no prediction."""

    labelled: int = Field(ge=0)
    missing: int = Field(ge=0)


class BenchmarkScores(BaseModel):
    """One model's FEAB scores (fractions; MAE in label units). None: no labelled reference."""

    n: int = Field(ge=0, description="Images scored.")
    n_unparseable: int = Field(ge=0, description="Answers from which nothing could be read (prediction None).")
    n_complete: int | None = Field(
        default=None, ge=0, description="Answers carrying all three descriptions: expression, valence and arousal, all 17 AUs."
    )
    expression_accuracy: float | None = None
    uar: float | None = None
    war: float | None = None
    au_f1: dict[str, float] = Field(
        default_factory=dict, description="Positive-class F1 of each AU that occurs in the references."
    )
    au_f1_mean: float | None = Field(default=None, description="Mean of au_f1 (Table 2's 'All').")
    valence_mae: float | None = None
    arousal_mae: float | None = None
    rouge_l: float | None = None
    rege_expression: float | None = Field(default=None, description="expression_accuracy + rouge_l.")
    rege_au: float | None = Field(default=None, description="au_f1_mean + rouge_l.")
    coverage: dict[str, Coverage] = Field(
        default_factory=dict, description="Per task: expression, valence, arousal, au (image×AU labels), text."
    )


def _expression(preds: list[FaceLabels], refs: Sequence[FaceLabels]) -> tuple[list[str | None], list[str]]:
    idx = [i for i, r in enumerate(refs) if r.expression is not None]
    return [preds[i].expression for i in idx], [refs[i].expression or "" for i in idx]


def _dimension(preds: list[FaceLabels], refs: Sequence[FaceLabels], dim: str) -> tuple[list[float | None], list[float]]:
    idx = [i for i, r in enumerate(refs) if getattr(r, dim) is not None]
    return [getattr(preds[i], dim) for i in idx], [getattr(refs[i], dim) for i in idx]


def _action_unit(preds: list[FaceLabels], refs: Sequence[FaceLabels], au: str) -> tuple[list[bool | None], list[bool]]:
    idx = [i for i, r in enumerate(refs) if au in r.aus]
    return [preds[i].aus.get(au) for i in idx], [refs[i].aus[au] for i in idx]


def score(
    predictions: Sequence[FaceLabels | None],
    references: Sequence[FaceLabels],
    *,
    generated_texts: Sequence[str] | None = None,
    reference_texts: Sequence[str] | None = None,
) -> BenchmarkScores:
    """Score parsed answers against FEAB labels (conventions in the module docstring).

    Per-AU F1 is reported for every AU with at least one positive reference
    (F1 of the positive class is undefined without one); `au_f1_mean` is their
    mean, as Table 2's "All" is the mean of its 14 AU columns. ROUGE-L and
    REGE need both text lists (one generated answer and one reference
    description per image).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if (generated_texts is None) != (reference_texts is None):
        raise ValueError("pass both generated_texts and reference_texts for ROUGE-L / REGE, or neither")
    preds = [p if p is not None else FaceLabels() for p in predictions]

    pred_exp, ref_exp = _expression(preds, references)
    coverage = {"expression": Coverage(labelled=len(ref_exp), missing=pred_exp.count(None))}
    exp_acc = accuracy(pred_exp, ref_exp) if ref_exp else None

    mae: dict[str, float | None] = {}
    for dim in ("valence", "arousal"):
        pred_va, ref_va = _dimension(preds, references, dim)
        mae[dim] = mean_absolute_error(pred_va, ref_va) if ref_va else None
        coverage[dim] = Coverage(labelled=len(ref_va), missing=pred_va.count(None))

    au_f1: dict[str, float] = {}
    au_labelled = au_missing = 0
    for au in ACTION_UNITS:
        pred_au, ref_au = _action_unit(preds, references, au)
        au_labelled, au_missing = au_labelled + len(ref_au), au_missing + pred_au.count(None)
        if any(ref_au):
            au_f1[au] = f1_positive(pred_au, ref_au)
    coverage["au"] = Coverage(labelled=au_labelled, missing=au_missing)
    au_mean = sum(au_f1.values()) / len(au_f1) if au_f1 else None

    rouge = None
    if generated_texts is not None and reference_texts is not None and references:
        if len(generated_texts) != len(references):
            raise ValueError(f"{len(generated_texts)} generated texts for {len(references)} references")
        rouge = rouge_l(generated_texts, reference_texts)
        coverage["text"] = Coverage(labelled=len(references), missing=sum(not t.strip() for t in generated_texts))

    return BenchmarkScores(
        n=len(references),
        n_unparseable=sum(p is None for p in predictions),
        n_complete=sum(p is not None and all(p.has(task) for task in Task) for p in predictions),
        expression_accuracy=exp_acc,
        uar=unweighted_average_recall(pred_exp, ref_exp) if ref_exp else None,
        war=weighted_average_recall(pred_exp, ref_exp) if ref_exp else None,
        au_f1=au_f1,
        au_f1_mean=au_mean,
        valence_mae=mae["valence"],
        arousal_mae=mae["arousal"],
        rouge_l=rouge,
        rege_expression=rege(exp_acc, rouge) if exp_acc is not None and rouge is not None else None,
        rege_au=rege(au_mean, rouge) if au_mean is not None and rouge is not None else None,
        coverage=coverage,
    )
