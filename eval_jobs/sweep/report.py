"""The sweep report: checkpoints in step order × dataset scores with CIs, a learning curve per dataset, the best
checkpoint marked, and paired comparisons on the shared samples.

    curve = curve_frame(summary, order)                # one row per checkpoint × dataset (the primary metric)
    tests = paired_comparisons(samples, order, best)   # each checkpoint vs the previous one and vs the best
    write_sweep_report(sweep_dir, samples, summary, order, note="synthetic trajectory")

Paired tests compare two checkpoints on the questions both answered, so question difficulty cancels out: with one
answer per question, McNemar's exact test on the discordant pairs; with repeats, a paired bootstrap of the
per-question accuracy difference (10,000 resamples, fixed seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from matplotlib.figure import Figure
from rich.console import Console

from eval_jobs.provenance import provenance_md
from eval_jobs.report import html_page, markdown_table, png_bytes, rich_table, write_atomic
from eval_jobs.store import RunDir

PRIMARY_METRIC = "accuracy"
N_PAIRED_BOOTSTRAP = 10_000
PAIRED_SEED = 0
BEST_MARK = "★"


def curve_frame(summary: pd.DataFrame, order: pd.DataFrame, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """`summary` (scoring's rows, model = checkpoint) reduced to `metric`, in the step order of `order`
    (columns checkpoint, step)."""
    rows = summary[summary["metric"] == metric].rename(columns={"model": "checkpoint"})
    cols = ["checkpoint", "dataset", "value", "ci_low", "ci_high", "n_questions", "failures"]
    curve = order.merge(rows[cols], on="checkpoint", how="inner")
    return curve.sort_values(["position", "dataset"], kind="stable").reset_index(drop=True)


def best_checkpoint(curve: pd.DataFrame) -> str | None:
    """The checkpoint with the highest mean score over the datasets (earliest step on ties)."""
    if curve.empty:
        return None
    mean = curve.groupby(["position", "checkpoint"], sort=True)["value"].mean()
    return str(mean.idxmax()[1])


def curve_table(curve: pd.DataFrame, best: str | None) -> pd.DataFrame:
    """Wide: one row per checkpoint (step order), per dataset "score [ci_low, ci_high]", the best marked."""
    cells = curve.assign(cell=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
                               curve[["value", "ci_low", "ci_high"]].itertuples(index=False)])
    wide = cells.pivot(index=["position", "checkpoint", "step"], columns="dataset", values="cell")
    wide = wide.reset_index().sort_values("position").drop(columns="position")
    wide.columns.name = None
    wide.insert(0, "best", np.where(wide["checkpoint"] == best, BEST_MARK, ""))
    return wide.reset_index(drop=True)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (b: only the first right; c: only the second)."""
    n = b + c
    if n == 0:
        return 1.0
    return float(binomtest(min(b, c), n, 0.5).pvalue)  # exact McNemar is a sign test on the discordant pairs


def paired_bootstrap(diffs: np.ndarray, n_resamples: int = N_PAIRED_BOOTSTRAP, seed: int = PAIRED_SEED) -> float:
    """Two-sided p-value of mean(diffs) = 0: how often a resample's mean, centred on the observed one, lies at
    least as far from it as the observed mean lies from zero."""
    if len(diffs) == 0:
        return 1.0
    observed = float(diffs.mean())
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_resamples, len(diffs)))].mean(axis=1)
    return float(np.mean(np.abs(means - observed) >= abs(observed) - 1e-12))


def _per_question(samples: pd.DataFrame, checkpoint: str, dataset: str) -> pd.Series:
    """Fraction of repeats correct per question index (a failed sample counts as wrong, as in scoring)."""
    g = samples[(samples["model"] == checkpoint) & (samples["dataset"] == dataset)]
    correct = g["correct"].astype("boolean").fillna(False) & (g["status"] == "ok")
    return correct.astype(float).groupby(g["index"]).mean()


def compare(samples: pd.DataFrame, dataset: str, first: str, second: str) -> dict:
    """Paired comparison of two checkpoints on `dataset`'s questions that both have answers for."""
    a, b = _per_question(samples, first, dataset), _per_question(samples, second, dataset)
    shared = a.index.intersection(b.index)
    a, b = a.loc[shared].to_numpy(), b.loc[shared].to_numpy()
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    if binary:
        only_first, only_second = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        p, method = mcnemar_exact(only_first, only_second), "mcnemar-exact"
    else:
        only_first = only_second = None
        p, method = paired_bootstrap(a - b), "paired-bootstrap"
    return {"dataset": dataset, "checkpoint": first, "other": second, "n_shared": len(shared),
            "score": float(a.mean()) if len(a) else math.nan, "other_score": float(b.mean()) if len(b) else math.nan,
            "diff": float((a - b).mean()) if len(a) else math.nan, "only_checkpoint_right": only_first,
            "only_other_right": only_second, "p_value": p, "method": method}  # fmt: skip


def paired_comparisons(samples: pd.DataFrame, order: pd.DataFrame, best: str | None) -> pd.DataFrame:
    """Each checkpoint vs the previous one (step order) and vs the best, per dataset."""
    names = order.sort_values("position")["checkpoint"].tolist()
    rows = []
    for dataset in sorted(samples["dataset"].unique()):
        present = set(samples.loc[samples["dataset"] == dataset, "model"])
        ordered = [n for n in names if n in present]
        for previous, current in zip(ordered, ordered[1:]):
            rows.append({"versus": "previous", **compare(samples, dataset, current, previous)})
        if best in present:
            rows += [{"versus": "best", **compare(samples, dataset, n, best)} for n in ordered if n != best]
    columns = ["versus", "dataset", "checkpoint", "other", "n_shared", "score", "other_score", "diff",
               "only_checkpoint_right", "only_other_right", "p_value", "method"]
    return pd.DataFrame(rows, columns=columns)


def learning_curve_png(curve: pd.DataFrame, dataset: str, best: str | None, note: str | None) -> bytes:
    """Score against step with the CI as a band; the best checkpoint starred."""
    d = curve[curve["dataset"] == dataset]
    use_steps = d["step"].notna().all()
    x = d["step"].astype(float).to_numpy() if use_steps else d["position"].to_numpy()
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.fill_between(x, d["ci_low"], d["ci_high"], alpha=0.25, color="#4C72B0", label="95% CI")
    ax.plot(x, d["value"], marker="o", color="#4C72B0", label=PRIMARY_METRIC)
    if best in set(d["checkpoint"]):
        row = d[d["checkpoint"] == best].iloc[0]
        bx = float(row["step"]) if use_steps else row["position"]
        ax.plot([bx], [row["value"]], marker="*", markersize=16, color="#DD8452", linestyle="",
                label=f"best: {best}")
    if not use_steps:
        ax.set_xticks(x, d["checkpoint"], rotation=30, fontsize=8)
    ax.set_xlabel("training step" if use_steps else "checkpoint")
    ax.set_ylabel(PRIMARY_METRIC)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{dataset}" + (f" ({note})" if note else ""))
    ax.legend(fontsize=8)
    return png_bytes(fig)


def checkpoint_order(names_and_steps: Sequence[tuple[str, int | None]]) -> pd.DataFrame:
    """Columns position, checkpoint, step: the order rows and curves follow."""
    frame = pd.DataFrame(names_and_steps, columns=["checkpoint", "step"])
    frame["step"] = frame["step"].astype("Int64")
    return frame.reset_index(names="position")


def write_sweep_report(sweep_dir: RunDir, samples: pd.DataFrame, summary: pd.DataFrame,
                       order: pd.DataFrame, *, note: str | None = None,
                       origin: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Write sweep.csv (the curve), comparisons.csv, plots/curve_<dataset>.png and sweep.md / sweep.html; returns
    the wide checkpoint table."""
    curve = curve_frame(summary, order)
    best = best_checkpoint(curve)
    table = curve_table(curve, best)
    tests = paired_comparisons(samples[samples["model"].isin(order["checkpoint"])], order, best)
    root = sweep_dir.root
    write_atomic(root / "sweep.csv", curve.drop(columns="position").to_csv(index=False).encode())
    write_atomic(root / "comparisons.csv", tests.to_csv(index=False).encode())
    plots = {f"curve_{ds}": learning_curve_png(curve, ds, best, note) for ds in sorted(curve["dataset"].unique())}
    for name, png in plots.items():
        write_atomic(sweep_dir.plots_dir / f"{name}.png", png)
    title = "evalcluster sweep" + (f" — {note}" if note else "")
    intro = (f"Best checkpoint ({PRIMARY_METRIC}, mean over datasets): {best}" if best else "No scores yet.")
    sections = {"Checkpoints": table, "Paired comparisons": tests}
    md = [f"# {title}", "", *provenance_md(origin), intro, ""]
    for heading, frame in sections.items():
        md += [f"## {heading}", "", markdown_table(frame), ""]
    md += [f"![{name}](plots/{name}.png)" for name in plots]
    write_atomic(root / "sweep.md", ("\n".join(md) + "\n").encode())
    write_atomic(root / "sweep.html", html_page(title, sections, plots, simulated=False, intro=intro,
                                                     origin=origin).encode())
    return table



def print_sweep(table: pd.DataFrame, console: Console | None = None) -> None:
    """The checkpoint table on the terminal: step order, score [95% CI] per dataset, the best starred."""
    console = console or Console()
    console.print(rich_table("Sweep", table, {c: c for c in table.columns},
                             caption=f"{PRIMARY_METRIC} [95% CI]; {BEST_MARK}: best mean over datasets"))
