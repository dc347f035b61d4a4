"""Aggregates of the scale benchmark: summary.json's figures, the printed table, curves.csv and curves.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.lcbench.measures import (
    BUDGET_GRID,
    RunCurve,
    iqm_ci,
    median_ci,
    normalised_regret,
    ranks,
    regret,
    regret_auc,
    speedup,
    wilcoxon_less,
)
from bench.lcbench.surrogate import FIDELITY_EPOCHS, MAX_EPOCHS
from muratune.fileio import write_text

CURVE_EVERY = 10  # curves.csv keeps one row per this many epochs (a fifth of a full trial), and the last epoch
STRONG_BASELINE = "random-asha"  # speedup_vs_random_asha is measured against this method's own final best


def _curves(runs: Sequence[dict[str, Any]]) -> dict[tuple[int, int, str], RunCurve]:
    return {
        (r["task"], r["seed"], r["method"]): RunCurve(np.asarray(r["best"]), np.asarray(r["clock_s"])) for r in runs
    }


def anytime_curves(runs: Sequence[dict[str, Any]], budget: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per method, (runs x `BUDGET_GRID`) arrays of normalised regret and of rank, runs in (task, seed) order.

    A task's worst and best accuracies (regret 1 and 0) are taken over every method, seed and epoch of that task;
    methods are ranked per task, seed and share of the budget among the methods that ran it.
    """
    curves = _curves(runs)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    pairs = sorted({(t, s) for t, s, _ in curves})
    normalised: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    ranked: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for task, seed in pairs:
        task_curves = [c for (t, _, _), c in curves.items() if t == task]
        low, high = min(float(c.best.min()) for c in task_curves), max(c.final for c in task_curves)
        best = np.stack([curves[task, seed, m].at_budget_shares(budget) for m in methods])
        for m, row, rank in zip(methods, best, ranks(best), strict=True):
            normalised[m].append(normalised_regret(row, low, high))
            ranked[m].append(rank)
    return {m: np.stack(v) for m, v in normalised.items()}, {m: np.stack(v) for m, v in ranked.items()}


def anytime_summary(runs: Sequence[dict[str, Any]], budget: int) -> dict[str, Any]:
    """summary.json's any-time figures: IQM of each run's normalised-regret AUC (with its CI) and the mean rank."""
    normalised, ranked = anytime_curves(runs, budget)
    auc = {m: iqm_ci(np.array([regret_auc(row) for row in curves])) for m, curves in normalised.items()}
    return {
        "anytime_regret_auc": {m: float(ci[0]) for m, ci in auc.items()},
        "anytime_regret_auc_ci": {m: [float(ci[1]), float(ci[2])] for m, ci in auc.items()},
        "mean_rank": {m: float(np.mean(r)) for m, r in ranked.items()},
    }


def strong_baseline_summary(
    curves: dict[tuple[int, int, str], RunCurve], pairs: Sequence[tuple[int, int]], methods: Sequence[str]
) -> dict[str, Any]:
    """speedup_vs_random_asha: like speedup_vs_random, against random-asha's own final best (None without it)."""
    if STRONG_BASELINE not in methods:
        return {"speedup_vs_random_asha": None, "speedup_vs_random_asha_ci": None}
    values = {m: [speedup(curves[t, s, m], curves[t, s, STRONG_BASELINE]) for t, s in pairs] for m in methods}
    cis = {m: median_ci(v) for m, v in values.items()}
    main = cis.get("muratune")
    return {
        "speedup_vs_random_asha": main[0] if main else None,
        "speedup_vs_random_asha_ci": list(main[1:]) if main else None,
        "speedup_vs_random_asha_by_method": {m: ci[0] for m, ci in cis.items()},
        "speedup_vs_random_asha_ci_by_method": {m: list(ci[1:]) for m, ci in cis.items()},
        "speedup_vs_random_asha_outcomes": {m: speedup_outcomes(v) for m, v in values.items()},
    }


def speedup_outcomes(speedups: Sequence[float]) -> dict[str, float]:
    """Shares of runs that reached the baseline's final best sooner, at the same epoch, later, or never. The same
    epoch means the same configuration trained in the same order: Optuna's TPE draws its start-up trials from a
    RandomSampler with its seed, so a seed's start-up configurations are random search's first ones."""
    values = np.asarray(speedups, dtype=float)
    return {
        "sooner": float(np.mean(values > 1)),
        "same_epoch": float(np.mean(values == 1)),
        "later": float(np.mean((values > 0) & (values < 1))),
        "never": float(np.mean(values == 0)),
    }


def aggregate(
    runs: Sequence[dict[str, Any]],
    known: dict[int, float],
    tasks: Sequence[int],
    seeds: int,
    workers: int,
    budget: int,
    methods: Sequence[str],
    first_seed: int = 0,
) -> dict[str, Any]:
    """summary.json: medians over tasks x seeds with bootstrap 95% CIs, and muratune against stock on regret."""
    curves = _curves(runs)
    pairs = [(t, s) for t in tasks for s in range(first_seed, first_seed + seeds)]
    regrets = {m: [regret(known[t], curves[t, s, m].final) for t, s in pairs] for m in methods}
    speedups = {m: [speedup(curves[t, s, m], curves[t, s, "random"]) for t, s in pairs] for m in methods}
    trials = {m: [r["trials"] for r in runs if r["method"] == m] for m in methods}
    regret_ci = {m: median_ci(v) for m, v in regrets.items()}
    speedup_ci = {m: median_ci(v) for m, v in speedups.items()}
    summary: dict[str, Any] = {
        "tasks": list(tasks),
        "seeds": seeds,
        "first_seed": first_seed,
        "workers": workers,
        "budget_epochs": budget,
        "fidelity_epochs": list(FIDELITY_EPOCHS),
        "trial_epochs": MAX_EPOCHS,
        "methods": list(methods),
        "speedup_vs_random": speedup_ci.get("muratune", (None,))[0],
        "speedup_vs_random_ci": list(speedup_ci["muratune"][1:]) if "muratune" in methods else None,
        **strong_baseline_summary(curves, pairs, methods),
        **anytime_summary(runs, budget),
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
    if "muratune" in methods and STRONG_BASELINE in methods:
        # The target of issue 29: muratune's final regret below random-asha's, paired by task and seed.
        summary["p_muratune_vs_random_asha"] = wilcoxon_less(regrets["muratune"], regrets[STRONG_BASELINE])
        strong = summary["regret"][STRONG_BASELINE]
        summary["regret_muratune_over_random_asha"] = summary["regret"]["muratune"] / strong if strong > 0 else None
    if "muratune" in methods and "bohb" in methods:
        summary["p_muratune_vs_bohb"] = wilcoxon_less(regrets["muratune"], regrets["bohb"])
        bohb = summary["regret"]["bohb"]
        summary["regret_muratune_over_bohb"] = summary["regret"]["muratune"] / bohb if bohb > 0 else None
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The printed table: one row per method."""
    rows = [_table_row(summary, m) for m in summary["methods"]]
    head = (
        f"{len(summary['tasks'])} tasks x {summary['seeds']} seeds, {summary['workers']} workers, "
        f"budget {summary['budget_epochs']} epochs (trials of {summary['trial_epochs']} epochs: surrogate epochs "
        f"{summary['fidelity_epochs'][0]}-{summary['fidelity_epochs'][1]})"
    )
    table = pd.DataFrame(rows).to_string(index=False)
    tails = []
    for key, other in (("p_muratune_vs_stock", "stock-optuna-asha"), ("p_muratune_vs_random_asha", STRONG_BASELINE)):
        if summary.get(key) is not None:
            tails.append(f"Wilcoxon one-sided, muratune < {other} on regret: p = {summary[key]:.3g}")
    outcomes = (summary.get("speedup_vs_random_asha_outcomes") or {}).get("muratune")
    if outcomes:
        shares = ", ".join(f"{share:.0%} {name.replace('_', ' ')}" for name, share in outcomes.items())
        tails.append(f"muratune reached random-asha's final best: {shares}")
    return "\n".join([head, table, *tails])


def _table_row(summary: dict[str, Any], m: str) -> dict[str, str]:
    """One method's row: medians [95% CI] of regret and speedups, IQM [95% CI] of the regret AUC, the mean rank."""
    lo, hi = summary["regret_ci"][m]
    slo, shi = summary["speedup_ci_by_method"][m]
    alo, ahi = summary["anytime_regret_auc_ci"][m]
    row = {
        "method": m,
        "regret (median)": f"{summary['regret'][m]:.4f} [{lo:.4f}, {hi:.4f}]",
        "speedup vs random": f"{summary['speedup_by_method'][m]:.2f} [{slo:.2f}, {shi:.2f}]",
    }
    if STRONG_BASELINE in summary["methods"]:
        rlo, rhi = summary["speedup_vs_random_asha_ci_by_method"][m]
        row["vs random-asha"] = f"{summary['speedup_vs_random_asha_by_method'][m]:.2f} [{rlo:.2f}, {rhi:.2f}]"
    return row | {
        "regret AUC (IQM)": f"{summary['anytime_regret_auc'][m]:.3f} [{alo:.3f}, {ahi:.3f}]",
        "mean rank": f"{summary['mean_rank'][m]:.2f}",
        "reached random's best": f"{summary['reached_random_best'][m]:.0%}",
        "trials": f"{summary['trials_median'][m]:.0f}",
    }


def write_curves(runs: Sequence[dict[str, Any]], known: dict[int, float], out: Path, every: int, budget: int) -> None:
    """curves.csv (best-so-far and regret against epochs and simulated seconds) and curves.png.

    curves.png: median regret against epochs and simulated time; IQM normalised regret (95% CI band) and mean rank
    against the share of the budget used.
    """
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
    _plot(frame, anytime_curves(runs, budget), out / "curves.png")


def _plot(frame: pd.DataFrame, anytime: tuple[dict[str, np.ndarray], dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Simulated time as a fraction of the time random search took for its whole budget on the same task and seed.
    random_end = frame[frame.method == "random"].groupby(["task", "seed"])["wall_s"].max().rename("random_end")
    frame = frame.join(random_end, on=["task", "seed"])
    frame["wall_fraction"] = frame["wall_s"] / frame["random_end"]
    fig, ((left, right), (lower_left, lower_right)) = plt.subplots(2, 2, figsize=(11, 8))
    for method, group in frame.groupby("method", sort=False):
        by_epoch = group.groupby("epochs")["regret"].median()
        left.plot(by_epoch.index, by_epoch.values, label=method)
        grid = np.linspace(0.02, 1.5, 75)
        medians = [np.median(_regret_at(group, g)) for g in grid]
        right.plot(grid, medians, label=method)
    left.set(xlabel="epochs used", ylabel="median regret (accuracy)", title="against epochs")
    left.set_yscale("symlog", linthresh=1e-3)
    right.set(xlabel="simulated time / random search's total time", title="against simulated wall time")
    right.sharey(left)
    left.legend()
    _plot_anytime(lower_left, lower_right, *anytime)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_anytime(regret_axes: Any, rank_axes: Any, normalised: dict[str, np.ndarray], ranked: dict[str, Any]) -> None:
    """IQM normalised regret with its bootstrap 95% band, and the mean rank, against the share of the budget."""
    share = BUDGET_GRID * 100
    for method, curves in normalised.items():
        middle, low, high = iqm_ci(curves)
        (line,) = regret_axes.plot(share, middle, label=method)
        regret_axes.fill_between(share, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        rank_axes.plot(share, ranked[method].mean(axis=0), label=method)
    regret_axes.set(xlabel="% of the budget used", ylabel="normalised regret (IQM, 95% CI)", title="any-time regret")
    regret_axes.set_yscale("symlog", linthresh=1e-2)
    rank_axes.set(xlabel="% of the budget used", ylabel="mean rank (1 = best)", title="average rank")


def _regret_at(group: pd.DataFrame, fraction: float) -> list[float]:
    """Each run's regret at a time fraction (its first recorded regret before it has anything: the worst)."""
    values = []
    for _, run in group.groupby(["task", "seed"]):
        before = run[run.wall_fraction <= fraction]
        values.append(float(before["regret"].iloc[-1]) if len(before) else float(run["regret"].iloc[0]))
    return values
