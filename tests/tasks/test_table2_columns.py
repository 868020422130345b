"""Table 2's 'All' (14 AUs) and our mean over every scored AU are both shown, labelled, never confused."""

from __future__ import annotations

import pytest

from tasks.benchmark.metrics import BenchmarkScores
from tasks.benchmark.paper import SCORED_AU_MEAN_COLUMN, TABLE2_ALL_COLUMN, TABLE2_AUS, table2_markdown, table_rows


def test_both_au_means_are_shown_and_labelled() -> None:
    # 14 Table 2 AUs at 0.5, and three AUs the paper's FEAB had no positives for at 1.0.
    au_f1 = {**dict.fromkeys(TABLE2_AUS, 0.5), "AU5": 1.0, "AU9": 1.0, "AU20": 1.0}
    ours = BenchmarkScores(n=10, n_unparseable=0, au_f1=au_f1, au_f1_mean=sum(au_f1.values()) / 17)
    rows = table_rows([("ours", ours)])
    assert rows[0][TABLE2_ALL_COLUMN] == 50.0
    assert rows[0][SCORED_AU_MEAN_COLUMN] == pytest.approx(58.8)
    gpt4o = next(r for r in rows if r["Method"] == "GPT-4o* (paper)")
    assert gpt4o[TABLE2_ALL_COLUMN] == gpt4o[SCORED_AU_MEAN_COLUMN] == 29.0
    markdown = table2_markdown([("ours", ours)])
    assert TABLE2_ALL_COLUMN in markdown and "comparable with the paper's 'All'" in markdown
