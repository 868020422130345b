"""The SEKE paper's published FEAB numbers (Tables 2 and 4), and tables that put ours beside them.

Every number in TABLE2 / TABLE4 is copied from the paper (arXiv 2505.18168,
§4.3–4.4) as printed: accuracy and F1 in %, MAE in label units. They are
the paper's results on its FEAB, not results of this code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasks.benchmark.metrics import BenchmarkScores

#: The AU columns of Table 2 (the FEAB AUs with positives; "All" is their mean).
TABLE2_AUS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24", "AU25", "AU26",
)  # fmt: skip


@dataclass(frozen=True)
class PaperRow:
    """One published row: percentages as printed, MAE as printed; `closed_source` is the paper's '*'."""

    method: str
    expression_accuracy: float
    au_f1: dict[str, float]
    au_f1_mean: float
    valence_mae: float
    arousal_mae: float
    closed_source: bool = False

    def scores(self) -> BenchmarkScores:
        """The row as BenchmarkScores (fractions, like ours); n is 0 because the paper gives no counts."""
        return BenchmarkScores(
            n=0,
            n_unparseable=0,
            expression_accuracy=self.expression_accuracy / 100,
            au_f1={au: f1 / 100 for au, f1 in self.au_f1.items()},
            au_f1_mean=self.au_f1_mean / 100,
            valence_mae=self.valence_mae,
            arousal_mae=self.arousal_mae,
        )


def _row(
    method: str, exp: float, f1: Sequence[float], mean: float, v: float, a: float, closed: bool = False
) -> PaperRow:
    return PaperRow(method, exp, dict(zip(TABLE2_AUS, f1, strict=True)), mean, v, a, closed)


#: SEKE paper Table 2: FEAB results of SEKE and eight other VLLMs (columns: EXP, TABLE2_AUS, All, V, A).
# fmt: off
TABLE2: tuple[PaperRow, ...] = (
    _row("LLaVA-NeXT-Interleave", 36.8, (26.0, 18.2, 14.5, 18.3, 3.1, 7.6, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 6.3, 0.423, 0.310),
    _row("MiniCPM-V2.6", 30.2, (10.6, 4.1, 46.9, 53.3, 28.3, 45.7, 57.8, 9.3, 3.9, 2.4, 2.4, 1.5, 10.7, 13.5), 20.7, 0.472, 0.351),
    _row("Emotion-LLaMA", 41.8, (26.3, 19.2, 43.3, 51.2, 48.7, 43.0, 57.4, 31.7, 16.6, 32.4, 14.9, 9.0, 32.5, 4.5), 30.8, 0.476, 0.318),
    _row("LLaVA-OneVision", 47.6, (22.1, 21.1, 55.8, 55.8, 45.3, 43.5, 49.3, 33.9, 15.1, 30.0, 16.9, 9.2, 41.1, 12.9), 32.3, 0.443, 0.327),
    _row("InternVL-2.5-MPO-8B", 47.9, (19.7, 16.2, 7.6, 61.8, 0.0, 52.5, 67.3, 2.0, 12.3, 18.3, 3.2, 0.0, 1.1, 9.8), 19.4, 0.391, 0.272),
    _row("Qwen2.5-VL-7B-Instruct", 44.1, (22.9, 12.7, 52.4, 42.4, 20.1, 40.4, 51.2, 23.3, 9.1, 25.7, 6.7, 5.4, 37.4, 14.2), 26.0, 0.413, 0.394),
    _row("GPT-4V", 54.3, (14.9, 12.8, 69.9, 69.3, 8.2, 11.4, 78.3, 2.2, 9.7, 14.7, 2.2, 0.0, 41.0, 33.0), 26.3, 0.374, 0.284, True),
    _row("GPT-4o", 61.1, (33.8, 32.1, 69.0, 65.6, 9.3, 10.8, 73.7, 4.4, 13.0, 27.4, 2.6, 17.2, 26.3, 20.5), 29.0, 0.342, 0.291, True),
    _row("SEKE", 69.4, (55.1, 44.5, 72.3, 65.6, 69.1, 60.3, 78.6, 65.7, 13.4, 47.8, 36.4, 46.8, 83.4, 29.5), 54.9, 0.295, 0.231),
)
# fmt: on


@dataclass(frozen=True)
class AblationRow:
    """SEKE paper Table 4: LLaVA-OneVision fine-tuned on data generated with / without each part."""

    prior: bool
    sv_uamc: bool
    expression_accuracy: float
    au_f1_mean: float
    valence_mae: float
    arousal_mae: float


TABLE4: tuple[AblationRow, ...] = (
    AblationRow(prior=False, sv_uamc=False, expression_accuracy=49.5, au_f1_mean=35.8, valence_mae=0.391, arousal_mae=0.302),
    AblationRow(prior=True, sv_uamc=False, expression_accuracy=52.8, au_f1_mean=39.5, valence_mae=0.312, arousal_mae=0.239),
    AblationRow(prior=False, sv_uamc=True, expression_accuracy=62.7, au_f1_mean=41.3, valence_mae=0.316, arousal_mae=0.285),
    AblationRow(prior=True, sv_uamc=True, expression_accuracy=69.4, au_f1_mean=54.9, valence_mae=0.295, arousal_mae=0.231),
)


def paper_scores(method: str) -> BenchmarkScores:
    """A Table 2 row by method name (as in TABLE2, e.g. "GPT-4o"), as BenchmarkScores."""
    for row in TABLE2:
        if row.method == method:
            return row.scores()
    raise ValueError(f"no Table 2 row named {method!r}; choose one of {', '.join(r.method for r in TABLE2)}")


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def _mae(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _au_columns(rows: Sequence[tuple[str, BenchmarkScores]]) -> list[str]:
    """Table 2's AUs, then any other AU we scored (our FEAB may have positives the paper's lacked)."""
    extra = {au for _, scores in rows for au in scores.au_f1} - set(TABLE2_AUS)
    return [*TABLE2_AUS, *sorted(extra, key=lambda au: int(au[2:]))]


#: Table 2's "All": the mean over its 14 AU columns, the number comparable with the paper's.
TABLE2_ALL_COLUMN = "AU All F1, Table 2's 14 AUs (%)"
#: Our mean over every AU with a positive reference (up to 17): not comparable with the paper's "All".
SCORED_AU_MEAN_COLUMN = "AU F1 mean, all AUs scored (%)"


def table2_au_mean(scores: BenchmarkScores) -> float | None:
    """Mean F1 over Table 2's 14 AUs that have a positive reference in `scores` (the paper's "All")."""
    values = [scores.au_f1[au] for au in TABLE2_AUS if au in scores.au_f1]
    return sum(values) / len(values) if values else None


def table_rows(
    rows: Sequence[tuple[str, BenchmarkScores]], include_paper: bool = True
) -> list[dict[str, str | float | None]]:
    """Table 2 layout as a list of dicts (a Prefect table artifact): our rows, then the paper's.

    Accuracy and F1 in %, MAE as is; None where a model has no value.
    Paper rows are named "<method> (paper)", with '*' for closed-source ones.
    """
    # Ours: the 14-AU mean computed like the paper's; the paper's rows: "All" as printed (both columns).
    named = [(name, scores, table2_au_mean(scores)) for name, scores in rows]
    if include_paper:
        named += [(f"{r.method}{'*' if r.closed_source else ''} (paper)", r.scores(), r.au_f1_mean / 100) for r in TABLE2]
    columns = _au_columns(rows)
    return [
        {
            "Method": name,
            "EXP Acc (%)": _percent(scores.expression_accuracy),
            **{au: _percent(scores.au_f1.get(au)) for au in columns},
            TABLE2_ALL_COLUMN: _percent(table2_all),
            SCORED_AU_MEAN_COLUMN: _percent(scores.au_f1_mean),
            "Valence MAE": _mae(scores.valence_mae),
            "Arousal MAE": _mae(scores.arousal_mae),
        }
        for name, scores, table2_all in named
    ]


def _cell(column: str, value: str | float | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if column.endswith("MAE") else f"{value:.1f}"
    return value


def table2_markdown(rows: Sequence[tuple[str, BenchmarkScores]], include_paper: bool = True) -> str:
    """A markdown table in Table 2's layout: our rows first, the paper's published rows beside them."""
    table = table_rows(rows, include_paper)
    header = list(table[0]) if table else ["Method"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(column, row[column]) for column in header) + " |" for row in table]
    lines.append("")
    lines.append(
        f"AU F1 is the positive-class F1 per AU. '{TABLE2_ALL_COLUMN}' is its mean over Table 2's 14 AU columns "
        "(those with a positive reference), comparable with the paper's 'All'; "
        f"'{SCORED_AU_MEAN_COLUMN}' is its mean over every AU scored here (up to 17: the paper's FEAB had no "
        "positives for the others), which is not."
    )
    if include_paper:
        lines.append(
            "Rows marked (paper) are the SEKE paper's published Table 2 (its FEAB, * = closed-source), "
            "not results of this code."
        )
    return "\n".join(lines)
