"""Render a report as self-contained HTML (jinja2, autoescaped, images inline) and as Markdown."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

import jinja2

from muratune.layout import PLOTS_DIR, REPORT_CAMS_DIR
from muratune.report.build import Report
from muratune.report.leaderboard import COLUMNS, ENSEMBLE, REFERENCE, TRIAL, Entry

TEMPLATE = "report.html.j2"
FIGURES = {
    "kappa": (
        "Kappa per body part",
        "The chosen model (best internal-val ensemble, else best internal-val trial) "
        "on the test split with stratified-bootstrap CIs, beside the published rows (hidden test set).",
    ),
    "roc": ("ROC curves per body part", "Test split; study probability = mean of the view probabilities."),
    "confusion": ("Confusion matrices", "Test split, at the model's decision thresholds."),
    "reliability": (
        "Reliability diagram",
        "Test split: the fraction of abnormal studies against the mean study probability in bins of 0.1, before and "
        "after the ensemble's calibration (temperature scaling per body part, fitted on held-out predictions).",
    ),
    "progress": (
        "Search progress",
        "Each trial's best internal-val kappa, and the best so far, by trial number and by wall time.",
    ),
    "learning_curves": (
        "Learning curves",
        "Internal-val kappa and loss per epoch; an x marks the last epoch of a "
        "trial ASHA stopped (PRUNED); dotted lines are ASHA's rungs.",
    ),
    "importance": ("Hyperparameter importance", "Optuna fANOVA over the completed trials."),
}
REFERENCE_NOTE = (
    "Reference rows are published results on the hidden MURA test set (207 studies; MURA paper, Rajpurkar et al., "
    "arXiv:1712.06957 v4, Table 1; official leaderboard). They are not directly comparable with the rows above, "
    "which are measured on the public valid split. The intervals published with them came from an evaluation script "
    "that used the variance of kappa as if it were its standard error, so they are far too narrow and are not "
    "shown; that is why this report computes its own bootstrap CIs."
)


def fmt(value: Any, digits: int = 3) -> str:
    """A number with fixed digits, or ``n/a`` when missing or undefined (a kappa of one class is NaN, never 0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def kappa_ci(row: Any, digits: int) -> str:
    """A kappa's bootstrap interval, ``[low, high]``, or ``n/a`` when the kappa is undefined."""
    if any(math.isnan(float(row[k])) for k in ("kappa", "kappa_low", "kappa_high")):
        return "n/a"
    return f"[{row['kappa_low']:.{digits}f}, {row['kappa_high']:.{digits}f}]"


def _sci(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, float) and not math.isnan(value) else fmt(value)


def details_text(entry: Entry) -> str:
    """A one-line description: hyperparameters of a trial, members of an ensemble."""
    d = entry.details
    if entry.kind == ENSEMBLE:
        parts = [f"members: {d.get('members', '')}", f"thresholds: {d.get('thresholds', '0.5')}"]
        return " \u00b7 ".join(parts + (["TTA"] if d.get("tta") else []))
    if entry.kind == TRIAL:
        parts = [
            fmt(d.get("backbone")),
            f"lr {_sci(d.get('lr'))}",
            f"batch {fmt(d.get('batch_size'))}",
            f"depth {fmt(d.get('finetune_depth'))}",
            f"aug {fmt(d.get('augment_policy'))}",
            f"wd {_sci(d.get('weight_decay'))}",
            fmt(d.get("optimizer")),
            f"{fmt(d.get('state'))}",
        ]
        return " \u00b7 ".join(parts)
    return ""


def _epochs(entry: Entry) -> str:
    if entry.kind != TRIAL:
        return ""
    epochs, best = entry.details.get("epochs"), entry.details.get("best_epoch")
    text = fmt(epochs)
    return f"{text} (best {fmt(best)})" if best is not None and not _isnan(best) else text


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(entry: Entry, column: str) -> dict[str, str]:
    value = entry.kappas()[column]
    if entry.score is None or column not in entry.score.index:
        return {"value": fmt(value), "ci": ""}
    row = entry.score.loc[column]
    return {"value": fmt(value), "ci": kappa_ci(row, 2), "n": str(int(row["n"]))}


def _overall(entry: Entry, metric: str) -> str:
    return fmt(float(entry.score.loc["overall", metric])) if entry.score is not None else "\u2013"


def leaderboard_rows(report: Report) -> list[dict[str, Any]]:
    """Formatted leaderboard rows for the templates."""
    rows = []
    for entry in report.entries:
        rows.append(
            {
                "name": entry.name,
                "kind": entry.kind,
                "split": entry.split,
                "best": entry is report.best,
                "cells": [_cell(entry, c) for c in COLUMNS],
                "auc": _overall(entry, "auc"),
                "sensitivity": _overall(entry, "sensitivity"),
                "specificity": _overall(entry, "specificity"),
                "accuracy": _overall(entry, "accuracy"),
                "val_kappa": fmt(entry.val_kappa),
                "oof_kappa": "" if math.isnan(entry.oof_kappa) else fmt(entry.oof_kappa),
                "epochs": _epochs(entry),
                "cpu_hours": fmt(entry.cpu_hours, 2) if entry.kind != REFERENCE else "",
                "gpu_hours": fmt(entry.gpu_hours, 2) if entry.kind != REFERENCE else "",
                "details": details_text(entry),
            }
        )
    return rows


def best_rows(report: Report) -> list[dict[str, str]]:
    """The chosen model's per-body-part table (the same numbers `muratune score` prints)."""
    if report.best is None or report.best.score is None:
        return []
    rows = []
    for part, row in report.best.score.iterrows():
        rows.append(
            {
                "part": str(part),
                "n": str(int(row["n"])),
                "positives": str(int(row["positives"])),
                "kappa": fmt(row["kappa"]),
                "ci": kappa_ci(row, 3),
                "auc": fmt(row["auc"]),
                "sensitivity": fmt(row["sensitivity"]),
                "specificity": fmt(row["specificity"]),
                "accuracy": fmt(row["accuracy"]),
            }
        )
    return rows


def summary_facts(report: Report) -> list[tuple[str, str]]:
    """Key facts for the header."""
    exp = report.experiment
    states = exp.summary["state"].value_counts().to_dict()
    cpu = sum(exp.trial_hours(str(t))[0] for t in exp.summary["trial_id"])
    gpu = sum(exp.trial_hours(str(t))[1] for t in exp.summary["trial_id"])
    trials = ", ".join(f"{states.get(s, 0)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL"))
    facts = [
        ("Experiment folder", str(exp.path)),
        ("Trials", f"{len(exp.summary)} ({trials})"),
        ("Search compute", f"{cpu:.2f} CPU hours, {gpu:.2f} accelerator hours"),
        ("Ensembles", ", ".join(e.name for e in exp.ensembles) or "none yet"),
        (
            "Bootstrap",
            f"{report.replicates} replicates, seed {report.seed}, studies resampled within each body "
            f"part, {report.level:.0%} percentile intervals",
        ),
        ("Generated", report.generated),
    ]
    if report.best is not None:
        facts.insert(4, ("Chosen on internal val", report.best.name))
    return facts


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def failed_trials(report: Report) -> list[dict[str, str]]:
    """Trials that failed, with their hyperparameters and the reason (one line)."""
    summary = report.experiment.summary
    if summary is None or "state" not in summary or "error" not in summary:
        return []
    failed = summary[summary["state"] == "FAIL"]
    keys = [k for k in ("backbone", "lr", "batch_size", "finetune_depth", "augment_policy") if k in failed]
    return [
        {
            "trial": str(row["trial_id"]),
            "params": ", ".join(f"{k}={fmt(row[k]) if isinstance(row[k], float) else row[k]}" for k in keys),
            "error": str(row["error"]),
        }
        for _, row in failed.iterrows()
    ]


def calibration_rows(report: Report) -> list[dict[str, str]]:
    """Formatted ECE and Brier score before and after calibration, one row per ensemble."""
    return [
        {key: fmt(value) if isinstance(value, float) else str(value) for key, value in row.items()}
        for row in report.calibration.to_dict(orient="records")
    ]


def template_context(report: Report) -> dict[str, Any]:
    """Everything the HTML template shows; strings are escaped by jinja2's autoescape."""
    figures = [
        {"key": key, "title": FIGURES[key][0], "caption": FIGURES[key][1], "src": _data_uri(report.figures[key])}
        for key in FIGURES
        if key in report.figures
    ]
    cams = report.experiment.cams
    return {
        "name": report.experiment.name,
        "facts": summary_facts(report),
        "notes": report.notes,
        "columns": COLUMNS,
        "rows": leaderboard_rows(report),
        "best": report.best.name if report.best is not None else None,
        "best_rows": best_rows(report),
        "calibration": calibration_rows(report),
        "reference_note": REFERENCE_NOTE,
        "figures": figures,
        "failed": failed_trials(report),
        "cam_score": [
            (str(k), fmt(v)) for k, v in (cams.score.items() if cams else []) if not isinstance(v, dict | list)
        ],
        "cam_images": [
            {"name": p.name, "src": _data_uri(p.read_bytes())} for p in (cams.images if cams is not None else [])
        ],
    }


def render_html(report: Report) -> str:
    """The self-contained HTML report (no scripts, no external resources)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("muratune.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(**template_context(report))


# ------------------------------------------------------------------------------------------------ markdown
def md(text: Any) -> str:
    """Escape text for a Markdown table cell (HTML special characters and pipes)."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines


LEADERBOARD_HEADER = [
    "model",
    "kind",
    "split",
    *COLUMNS,
    "AUC",
    "sens",
    "spec",
    "acc",
    "internal-val kappa",
    "out-of-fold kappa",
    "epochs",
    "CPU h",
    "GPU h",
    "details",
]
ROW_KEYS = [
    "auc",
    "sensitivity",
    "specificity",
    "accuracy",
    "val_kappa",
    "oof_kappa",
    "epochs",
    "cpu_hours",
    "gpu_hours",
    "details",
]


def _md_header(ctx: dict[str, Any]) -> list[str]:
    lines = [f"# muratune report: {md(ctx['name'])}", ""]
    lines += [f"- **{md(k)}:** {md(v)}" for k, v in ctx["facts"]] + [""]
    lines += [f"> {md(note)}" + "\n>" for note in ctx["notes"]] + [""]
    if ctx["failed"]:
        lines += ["## Failed trials", ""]
        rows = [[f["trial"], f["params"], f["error"]] for f in ctx["failed"]]
        lines += _md_table(["trial", "hyperparameters", "reason"], rows) + [""]
    return lines


def _md_leaderboard(ctx: dict[str, Any]) -> list[str]:
    rows = []
    for row in ctx["rows"]:
        cells = [f"{c['value']} {c['ci']}".strip() for c in row["cells"]]
        name = row["name"] + (" (chosen)" if row["best"] else "") + (" \u2020" if row["kind"] == REFERENCE else "")
        rows.append([name, row["kind"], row["split"], *cells, *(row[key] for key in ROW_KEYS)])
    return ["## Leaderboard", ""] + _md_table(LEADERBOARD_HEADER, rows) + ["", f"\u2020 {md(REFERENCE_NOTE)}", ""]


def _md_best(ctx: dict[str, Any], level: float) -> list[str]:
    if not ctx["best_rows"]:
        return []
    keys = ["part", "n", "positives", "kappa", "ci", "auc", "sensitivity", "specificity", "accuracy"]
    header = ["body part", "studies", "abnormal", "kappa", f"{level:.0%} CI", "AUC", "sens", "spec", "acc"]
    title = [f"## Per body part: {md(ctx['best'])} (test split)", ""]
    return title + _md_table(header, [[r[k] for k in keys] for r in ctx["best_rows"]]) + [""]


CALIBRATION_HEADER = ["ensemble", "calibration", "ECE before", "ECE after", "Brier before", "Brier after"]


def _md_calibration(ctx: dict[str, Any]) -> list[str]:
    if not ctx["calibration"]:
        return []
    rows = [list(row.values()) for row in ctx["calibration"]]
    return ["## Calibration (test split)", ""] + _md_table(CALIBRATION_HEADER, rows) + [""]


def _md_figures(ctx: dict[str, Any]) -> list[str]:
    lines = []
    for figure in ctx["figures"]:
        link = f"![{figure['title']}]({PLOTS_DIR}/{figure['key']}.png)"
        lines += [f"## {figure['title']}", "", md(figure["caption"]), "", link, ""]
    if ctx["cam_score"] or ctx["cam_images"]:
        lines += ["## Class activation maps", ""]
        lines += _md_table(["score", "value"], [list(item) for item in ctx["cam_score"]]) + [""]
        images = ctx["cam_images"]
        lines += [f"![{md(image['name'])}]({REPORT_CAMS_DIR}/{md(image['name'])})" for image in images] + [""]
    return lines


def render_markdown(report: Report) -> str:
    """The Markdown report; figures are linked from ``plots/``."""
    ctx = template_context(report)
    lines = _md_header(ctx) + _md_leaderboard(ctx) + _md_best(ctx, report.level) + _md_calibration(ctx)
    lines += _md_figures(ctx)
    return "\n".join(lines)
