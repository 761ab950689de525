"""The sweep report's statistics and layout on hand-made per-sample frames (pure pandas, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from eval_jobs.scoring import summarize
from eval_jobs.store import RunDir
from eval_jobs.sweep.report import (
    best_checkpoint,
    checkpoint_order,
    compare,
    curve_frame,
    mcnemar_exact,
    paired_bootstrap,
    write_sweep_report,
)


def samples(correct_by_checkpoint: dict[str, list[int]], dataset: str = "ds", repeats: int = 1) -> pd.DataFrame:
    rows = []
    for model, flags in correct_by_checkpoint.items():
        for index, flag in enumerate(flags):
            for repeat in range(repeats):
                rows.append({"model": model, "dataset": dataset, "index": index, "repeat": repeat,
                             "correct": bool(flag), "extracted": str(flag), "status": "ok"})
    return pd.DataFrame(rows)


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * sum(math.comb(10, i) for i in range(3)) / 1024)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_separates_a_real_difference_from_noise() -> None:
    rng = np.random.default_rng(1)
    assert paired_bootstrap(rng.normal(0.0, 1.0, 200)) > 0.05
    assert paired_bootstrap(rng.normal(0.5, 1.0, 200)) < 0.001


def test_comparison_uses_only_shared_questions() -> None:
    frame = samples({"a": [1, 1, 1, 1, 0], "b": [0, 0, 0, 1]})  # b lacks question 4
    row = compare(frame, "ds", "a", "b")
    assert (row["n_shared"], row["only_checkpoint_right"], row["only_other_right"]) == (4, 3, 0)
    assert row["method"] == "mcnemar-exact" and row["p_value"] == pytest.approx(0.25)
    assert compare(samples({"a": [1, 0], "b": [0, 0]}, repeats=2), "ds", "a", "b")["method"] == "mcnemar-exact"
    mixed = samples({"a": [1, 0, 1], "b": [0, 0, 1]}, repeats=2)
    mixed.loc[(mixed["model"] == "a") & (mixed["repeat"] == 1), "correct"] = False
    assert compare(mixed, "ds", "a", "b")["method"] == "paired-bootstrap"


def test_report_orders_by_step_marks_the_best_and_draws_curves(tmp_path) -> None:
    frame = pd.concat([
        samples({"step_100": [0] * 8 + [1] * 2, "step_50": [0] * 10, "step_200": [1] * 9 + [0]}, "arith"),
        samples({"step_100": [1] * 5 + [0] * 5, "step_50": [1] * 1 + [0] * 9, "step_200": [1] * 4 + [0] * 6},
                "gsm"),
    ])
    summary = summarize(frame)
    order = checkpoint_order([("step_50", 50), ("step_100", 100), ("step_200", 200)])
    curve = curve_frame(summary, order)
    assert curve["checkpoint"].drop_duplicates().tolist() == ["step_50", "step_100", "step_200"]
    assert best_checkpoint(curve) == "step_200"  # mean of 0.9 and 0.4 beats 0.2 and 0.5
    run = RunDir(tmp_path).create()
    table = write_sweep_report(run, frame, summary, order, note="synthetic trajectory")
    assert table["checkpoint"].tolist() == ["step_50", "step_100", "step_200"]
    assert table["best"].tolist() == ["", "", "★"]
    assert table.loc[2, "arith"] == "0.900 [0.700, 1.000]"
    tests = pd.read_csv(tmp_path / "comparisons.csv")
    previous = tests[tests["versus"] == "previous"]
    assert previous[["dataset", "checkpoint", "other"]].values.tolist() == [
        ["arith", "step_100", "step_50"], ["arith", "step_200", "step_100"],
        ["gsm", "step_100", "step_50"], ["gsm", "step_200", "step_100"]]
    vs_best = tests[tests["versus"] == "best"]
    assert set(vs_best["other"]) == {"step_200"} and len(vs_best) == 4
    assert tests["p_value"].between(0, 1).all()
    for dataset in ("arith", "gsm"):
        assert (tmp_path / "plots" / f"curve_{dataset}.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "sweep.html").read_text()
    assert "synthetic trajectory" in page and "Best checkpoint" in page and page.count("<img") == 2
