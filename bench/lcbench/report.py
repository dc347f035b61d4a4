"""Aggregates of the scale benchmark: summary.json's figures, the printed table, curves.csv and curves.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.lcbench.measures import RunCurve, median_ci, regret, speedup, wilcoxon_less
from muratune.fileio import write_text

CURVE_EVERY = 13  # curves.csv keeps one row per this many epochs (a quarter of a full trial), and the last epoch


def _curves(runs: Sequence[dict[str, Any]]) -> dict[tuple[int, int, str], RunCurve]:
    return {
        (r["task"], r["seed"], r["method"]): RunCurve(np.asarray(r["best"]), np.asarray(r["clock_s"])) for r in runs
    }


def aggregate(
    runs: Sequence[dict[str, Any]],
    known: dict[int, float],
    tasks: Sequence[int],
    seeds: int,
    workers: int,
    budget: int,
    methods: Sequence[str],
) -> dict[str, Any]:
    """summary.json: medians over tasks x seeds with bootstrap 95% CIs, and muratune against stock on regret."""
    curves = _curves(runs)
    pairs = [(t, s) for t in tasks for s in range(seeds)]
    regrets = {m: [regret(known[t], curves[t, s, m].final) for t, s in pairs] for m in methods}
    speedups = {m: [speedup(curves[t, s, m], curves[t, s, "random"]) for t, s in pairs] for m in methods}
    trials = {m: [r["trials"] for r in runs if r["method"] == m] for m in methods}
    regret_ci = {m: median_ci(v) for m, v in regrets.items()}
    speedup_ci = {m: median_ci(v) for m, v in speedups.items()}
    summary: dict[str, Any] = {
        "tasks": list(tasks),
        "seeds": seeds,
        "workers": workers,
        "budget_epochs": budget,
        "methods": list(methods),
        "speedup_vs_random": speedup_ci.get("muratune", (None,))[0],
        "speedup_vs_random_ci": list(speedup_ci["muratune"][1:]) if "muratune" in methods else None,
        "regret": {m: ci[0] for m, ci in regret_ci.items()},
        "regret_ci": {m: list(ci[1:]) for m, ci in regret_ci.items()},
        "speedup_by_method": {m: ci[0] for m, ci in speedup_ci.items()},
        "speedup_ci_by_method": {m: list(ci[1:]) for m, ci in speedup_ci.items()},
        "reached_random_best": {m: float(np.mean(np.asarray(v) > 0)) for m, v in speedups.items()},
        "trials_median": {m: float(np.median(v)) for m, v in trials.items()},
        "p_muratune_vs_stock": None,
        "best_known": {str(t): known[t] for t in tasks},
        "regret_by_task": {
            str(t): {m: float(np.median([regrets[m][i] for i, p in enumerate(pairs) if p[0] == t])) for m in methods}
            for t in tasks
        },
    }
    if "muratune" in methods and "stock-optuna-asha" in methods:
        summary["p_muratune_vs_stock"] = wilcoxon_less(regrets["muratune"], regrets["stock-optuna-asha"])
    if "muratune" in methods and "bohb" in methods:
        summary["p_muratune_vs_bohb"] = wilcoxon_less(regrets["muratune"], regrets["bohb"])
        bohb = summary["regret"]["bohb"]
        summary["regret_muratune_over_bohb"] = summary["regret"]["muratune"] / bohb if bohb > 0 else None
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The printed table: one row per method."""
    rows = []
    for m in summary["methods"]:
        lo, hi = summary["regret_ci"][m]
        slo, shi = summary["speedup_ci_by_method"][m]
        rows.append(
            {
                "method": m,
                "regret (median)": f"{summary['regret'][m]:.4f} [{lo:.4f}, {hi:.4f}]",
                "speedup vs random": f"{summary['speedup_by_method'][m]:.2f} [{slo:.2f}, {shi:.2f}]",
                "reached random's best": f"{summary['reached_random_best'][m]:.0%}",
                "trials": f"{summary['trials_median'][m]:.0f}",
            }
        )
    head = (
        f"{len(summary['tasks'])} tasks x {summary['seeds']} seeds, {summary['workers']} workers, "
        f"budget {summary['budget_epochs']} epochs"
    )
    table = pd.DataFrame(rows).to_string(index=False)
    p = summary["p_muratune_vs_stock"]
    tail = f"Wilcoxon one-sided, muratune < stock-optuna-asha on regret: p = {p:.3g}" if p is not None else ""
    return "\n".join([head, table, tail])


def write_curves(runs: Sequence[dict[str, Any]], known: dict[int, float], out: Path, every: int) -> None:
    """curves.csv (best-so-far and regret against epochs and simulated seconds) and curves.png (medians)."""
    rows = []
    for r in runs:
        best, clock = np.asarray(r["best"]), np.asarray(r["clock_s"])
        idx = sorted(set(range(every - 1, len(best), every)) | {len(best) - 1})
        for i in idx:
            rows.append(
                {
                    "method": r["method"],
                    "workers": r["workers"],
                    "task": r["task"],
                    "seed": r["seed"],
                    "epochs": i + 1,
                    "wall_s": round(float(clock[i]), 2),
                    "best": round(float(best[i]), 6),
                    "regret": round(regret(known[r["task"]], float(best[i])), 6),
                }
            )
    frame = pd.DataFrame(rows)
    write_text(out / "curves.csv", frame.to_csv(index=False))
    _plot(frame, out / "curves.png")


def _plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Simulated time as a fraction of the time random search took for its whole budget on the same task and seed.
    random_end = frame[frame.method == "random"].groupby(["task", "seed"])["wall_s"].max().rename("random_end")
    frame = frame.join(random_end, on=["task", "seed"])
    frame["wall_fraction"] = frame["wall_s"] / frame["random_end"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, group in frame.groupby("method", sort=False):
        by_epoch = group.groupby("epochs")["regret"].median()
        left.plot(by_epoch.index, by_epoch.values, label=method)
        grid = np.linspace(0.02, 1.5, 75)
        medians = [np.median(_regret_at(group, g)) for g in grid]
        right.plot(grid, medians, label=method)
    left.set(xlabel="epochs used", ylabel="median regret (accuracy)", title="against epochs")
    left.set_yscale("symlog", linthresh=1e-3)
    right.set(xlabel="simulated time / random search's total time", title="against simulated wall time")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _regret_at(group: pd.DataFrame, fraction: float) -> list[float]:
    """Each run's regret at a time fraction (its first recorded regret before it has anything: the worst)."""
    values = []
    for _, run in group.groupby(["task", "seed"]):
        before = run[run.wall_fraction <= fraction]
        values.append(float(before["regret"].iloc[-1]) if len(before) else float(run["regret"].iloc[0]))
    return values
