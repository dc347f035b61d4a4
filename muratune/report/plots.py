"""Report figures as PNG bytes (matplotlib's object API with the Agg canvas: no pyplot state, no display)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from muratune.constants import BODY_PART, EPOCH, LABEL, METRIC, PROB, VAL_LOSS
from muratune.metrics import binary_metrics
from muratune.report.leaderboard import COLUMNS, PARTS, Entry
from muratune.report.scoring import OVERALL, decided, part_order

DPI = 110
ROC_COLOURS = ("#d62728", "#1f77b4", "#2ca02c")
STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}
REFERENCE_STYLES = {
    "Radiologist": ("#7f7f7f", "s"),
    "MURA baseline": ("#2ca02c", "^"),
    "MURA leaderboard": ("#9467bd", "D"),
}


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _reference_style(name: str) -> tuple[str, str]:
    return next((style for prefix, style in REFERENCE_STYLES.items() if name.startswith(prefix)), ("#8c564b", "v"))


def kappa_plot(best: Entry, references: list[Entry], level: float) -> bytes:
    """Kappa per body part: the chosen model with bootstrap CI whiskers, published reference rows beside it."""
    assert best.score is not None
    fig = Figure(figsize=(10, 4.6))
    ax = fig.add_subplot()
    x = np.arange(len(COLUMNS), dtype=float)
    kappa = best.kappas()
    score = best.score.reindex(list(COLUMNS))
    values = np.array([kappa[c] for c in COLUMNS])
    low = values - score["kappa_low"].to_numpy(dtype=float)
    high = score["kappa_high"].to_numpy(dtype=float) - values
    ax.errorbar(
        x - 0.15,
        values,
        yerr=[low, high],
        fmt="o",
        color="#d62728",
        ms=7,
        capsize=4,
        lw=1.6,
        zorder=3,
        label=f"{best.name} (test split, {level:.0%} bootstrap CI)",
    )
    offsets = np.linspace(0.02, 0.3, max(len(references), 1))
    seen: set[str] = set()
    for offset, ref in zip(offsets, references, strict=False):
        colour, marker = _reference_style(ref.name)
        group = ref.name.split(" ")[0] if ref.name.startswith("Radiologist") else ref.name
        label = "Radiologists 1-3 (published, hidden test)" if group == "Radiologist" else f"{ref.name} (published)"
        ref_values = [ref.kappas()[c] for c in COLUMNS]
        ax.scatter(
            x + offset,
            ref_values,
            marker=marker,
            color=colour,
            s=28,
            alpha=0.85,
            zorder=2,
            label=None if group in seen else label,
        )
        seen.add(group)
    ax.axvline(len(PARTS) - 0.5, color="#bbbbbb", lw=0.8)
    ax.axhline(0, color="#999999", lw=0.6)
    ax.set_xticks(x, [c if c != OVERALL else "OVERALL" for c in COLUMNS])
    ax.set_ylabel("Cohen's kappa (study level)")
    bottom = min(-0.05, float(np.nanmin(values - low)) - 0.05)
    ax.set_ylim(max(bottom, -1.0), 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8.5, frameon=False)
    ax.set_title("Kappa per body part (published rows: hidden MURA test set, not directly comparable)")
    ax.title.set_fontsize(10)
    return to_png(fig)


def roc_plot(entries: list[Entry]) -> bytes | None:
    """ROC curves per body part (and overall) for up to three entries that saved probabilities."""
    usable = [e for e in entries if e.studies is not None and PROB in e.studies and e.studies[PROB].notna().all()]
    if not usable:
        return None
    frames = [(e.name, decided(e.studies)) for e in usable[:3]]
    panels = [*part_order(frames[0][1][BODY_PART]), OVERALL]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(12, 3.0 * rows))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        title = panel.removeprefix("XR_").lower()
        for k, ((name, frame), colour) in enumerate(zip(frames, ROC_COLOURS, strict=False)):
            part = frame if panel == OVERALL else frame[frame[BODY_PART] == panel]
            if part[LABEL].nunique() < 2:
                ax.text(0.5, 0.5, "one class only:\nno ROC", ha="center", va="center", fontsize=8)
                break
            fpr, tpr, _ = roc_curve(part[LABEL], part[PROB])
            # The first entry (the chosen model) is drawn on top and thicker, so overlapping curves stay visible.
            ax.plot(fpr, tpr, color=colour, lw=2.2 if k == 0 else 1.2, zorder=4 - k, label=name)
            auc = binary_metrics(part[LABEL].to_numpy(), part[PROB].to_numpy())["auc"]
            ax.text(0.97, 0.05 + 0.09 * k, f"AUC {auc:.2f}", color=colour, ha="right", fontsize=8)
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("sensitivity", fontsize=8)
        if i >= len(panels) - cols:
            ax.set_xlabel("1 - specificity", fontsize=8)
    handles, labels = max((a.get_legend_handles_labels() for a in fig.axes), key=lambda hl: len(hl[0]))
    fig.legend(
        handles, labels, loc="lower center", ncol=len(frames), fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02)
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return to_png(fig)


def reliability_plot(name: str, before: pd.DataFrame, after: pd.DataFrame, bins: int = 10) -> bytes | None:
    """Reliability diagram: abnormal fraction against mean probability per equal-width bin, before and after."""
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls="--", label="perfectly calibrated")
    drawn = False
    for (label, frame), colour in zip(
        (("uncalibrated", before), ("calibrated", after)), ROC_COLOURS[::-1], strict=False
    ):
        known = frame[frame[PROB].notna()]
        if known.empty:
            continue
        which = np.clip((known[PROB].to_numpy(dtype=float) * bins).astype(int), 0, bins - 1)
        grouped = known.assign(bin=which).groupby("bin")
        ax.plot(grouped[PROB].mean(), grouped[LABEL].mean(), marker="o", color=colour, lw=1.6, label=label)
        drawn = True
    if not drawn:
        return None
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean study probability (bin of 0.1)", fontsize=9)
    ax.set_ylabel("fraction abnormal", fontsize=9)
    ax.set_title(name, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return to_png(fig)


def confusion_plot(entry: Entry) -> bytes | None:
    """2x2 confusion matrices per body part and overall (rows: truth, columns: prediction)."""
    if entry.score is None:
        return None
    panels = list(entry.score.index)
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(10, 2.6 * rows))
    for i, panel in enumerate(panels):
        row = entry.score.loc[panel]
        matrix = np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]], dtype=float)
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(matrix / max(matrix.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for (r, c), value in np.ndenumerate(matrix):
            shade = matrix[r, c] / max(matrix.sum(), 1)
            ax.text(
                c, r, f"{int(value)}", ha="center", va="center", fontsize=11, color="white" if shade > 0.5 else "black"
            )
        ax.set_xticks([0, 1], ["normal", "abnormal"], fontsize=8)
        ax.set_yticks([0, 1], ["normal", "abnormal"], fontsize=8)
        ax.set_title(f"{panel}  (kappa {row['kappa']:.2f})", fontsize=9)
        if i % cols == 0:
            ax.set_ylabel("truth", fontsize=8)
        if i >= len(panels) - cols:
            ax.set_xlabel("prediction", fontsize=8)
    fig.suptitle(f"Confusion matrices on the test split: {entry.name}", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def progress_plot(trials: pd.DataFrame) -> bytes | None:
    """Best internal-val kappa so far against trial number and against elapsed wall time.

    Args:
        trials: one row per trial with ``number``, ``state``, ``best_val_kappa`` and ``end_min``.
    """
    trials = trials.dropna(subset=["best_val_kappa"])
    if trials.empty:
        return None
    fig = Figure(figsize=(11, 3.8))
    for i, (column, xlabel) in enumerate((("number", "trial number"), ("end_min", "wall time (minutes)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ordered = trials.dropna(subset=[column]).sort_values(column)
        for state, group in ordered.groupby("state"):
            ax.scatter(
                group[column],
                group["best_val_kappa"],
                color=STATE_COLOURS.get(str(state), "#7f7f7f"),
                s=30,
                label=str(state).lower(),
                zorder=3,
            )
        ax.step(
            ordered[column],
            ordered["best_val_kappa"].cummax(),
            where="post",
            color="#333333",
            lw=1.4,
            label="best so far",
            zorder=2,
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("internal-val kappa (best epoch)")
        ax.grid(alpha=0.3)
        if column == "number":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def asha_rungs(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """Epochs at which ASHA compares trials (grace_period x reduction_factor^k, below max_epochs)."""
    rungs, rung = [], float(max(grace_period, 1))
    while rung < max_epochs and reduction_factor > 1:
        rungs.append(int(round(rung)))
        rung *= reduction_factor
    return rungs


def learning_curves_plot(histories: dict[str, pd.DataFrame], states: dict[str, str], rungs: list[int]) -> bytes | None:
    """Internal-val kappa and loss per epoch for every trial; an x marks where ASHA stopped a pruned trial."""
    usable = {t: h for t, h in histories.items() if EPOCH in h and METRIC in h and len(h)}
    if not usable:
        return None
    fig = Figure(figsize=(11, 4))
    for i, (metric, ylabel) in enumerate(((METRIC, "internal-val kappa"), (VAL_LOSS, "internal-val loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for trial_id, history in usable.items():
            if metric not in history:
                continue
            state = states.get(trial_id, "COMPLETE")
            colour = STATE_COLOURS.get(state, "#7f7f7f")
            ax.plot(history[EPOCH], history[metric], color=colour, lw=1.1, alpha=0.75, marker=".", ms=4)
            if state in ("PRUNED", "FAIL"):
                ax.scatter(
                    history[EPOCH].iloc[-1],
                    history[metric].iloc[-1],
                    marker="x",
                    s=60,
                    color=colour,
                    zorder=3,
                    linewidths=2,
                )
        for rung in rungs:
            ax.axvline(rung, color="#999999", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [
        fig.axes[0].plot([], [], color=STATE_COLOURS["COMPLETE"], label="completed")[0],
        fig.axes[0].scatter([], [], marker="x", color=STATE_COLOURS["PRUNED"], label="stopped early (last epoch)"),
        fig.axes[0].plot([], [], color="#999999", ls=":", label="ASHA rungs")[0],
    ]
    fig.axes[0].legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    return to_png(fig)


def importance_plot(importances: dict[str, float]) -> bytes | None:
    """Horizontal bars of fANOVA importance, most important on top."""
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    for y, name in enumerate(names):
        ax.text(importances[name] + 0.01, y, f"{importances[name]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(importances.values()) + 0.1))
    ax.set_xlabel("fANOVA importance (share of explained variance of internal-val kappa)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return to_png(fig)
