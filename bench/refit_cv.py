"""Refit against the search's own ensembles: test kappa and AUC of ensemble/cv, best-single and greedy per seed.

Each seed runs the demo's pipeline on the same synthetic data (search with that seed, ensemble, refit, report) and
reads the report's leaderboard. It prints one table and writes ``summary.json`` with the issue's targets:
``cv`` at least matches ``best-single`` on test AUC in every seed and beats it on mean test kappa.

    python -m bench.refit_cv --out runs/bench/refit                   # 3 seeds, refit --top 3 --folds 5
    python -m bench.refit_cv --out runs/bench/refit --seeds 0,1,2,3,4 # seeds already run are read, not rerun
    python -m bench.refit_cv --out runs/bench/refit --seeds 0,1,2,3,4 --tta   # and again with flip TTA (no training)
    python -m bench.refit_cv --out runs/bench/refit --top 2 --folds 3 --seeds 0,1

With ``--difficulty`` or ``--test-studies`` it runs the hard mode (`bench.refit_hard`): harder data with a test split
of at least 300 studies (``--studies`` then counts the train split), one search per seed, and each refit variant
(``--refit-args``) in its own copy of the seed's experiment, so variants are compared on the same searches:

    python -m bench.refit_cv --out runs/bench/refit-hard --difficulty 0.8 --studies 540 --test-studies 300 \\
        --top 2 --folds 3 --seeds 0,1,2,3,4 [--refit-args "--epochs peak"]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from muratune.constants import BODY_PART, LABEL, PRED, PROB, STUDY_PATH
from muratune.demo import DEMO_CONFIG, demo_config_text, usable_cores
from muratune.fileio import refuse_foreign, write_json, write_text
from muratune.layout import (
    ENSEMBLE_DIR,
    EXPERIMENT_KIND,
    REFIT_DIR,
    REFIT_PLAN,
    REFIT_SUMMARY,
    TEST_METRICS,
    TEST_STUDIES,
    TRIALS_DIR,
)
from muratune.report.bootstrap import percentile_interval, replicate_kappas, resample_counts

MODELS = ("cv", "best-single", "greedy")
REPLICATES = 2000


def muratune(*args: str) -> float:
    """Run one muratune command in a fresh process; return its wall seconds (stop on failure)."""
    print(f"$ muratune {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "muratune.cli", *args], check=True)
    return time.perf_counter() - started


def prepare_data(out: Path, studies: int) -> Path:
    """The demo's synthetic data (seed 0), written and cached once for every seed."""
    data = out / "data"
    if not (data / "MURA-v1.1").exists():
        muratune("data", "synth", str(data), "--studies", str(studies), "--seed", "0", "--difficulty", "easy")
        muratune("data", "cache", str(data), "--size", "64")
    return data


def run_seed(out: Path, data: Path, seed: int, top: int, folds: int) -> dict:
    """Search, ensemble, refit and report for one seed; the three models' test figures and the stage times."""
    seed_dir = out / f"seed-{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    config = seed_dir / DEMO_CONFIG
    write_text(config, demo_config_text())
    exp = seed_dir / "runs" / "demo"
    cores = max(1, usable_cores() // 2)
    seconds = {}
    if not (exp / "report" / "leaderboard.csv").exists():
        seconds["search"] = muratune(
            "search",
            str(config),
            "--data",
            str(data),
            "--set",
            f"storage={seed_dir / 'runs'}",
            "--set",
            f"optuna.seed={seed}",
            "--set",
            f"train.seed={seed}",
            "--set",
            f"resources.cpus_per_trial={cores}",
            "--overwrite",
        )
        seconds["ensemble"] = muratune("ensemble", str(exp), "--overwrite")
        seconds["refit"] = muratune("refit", str(exp), "--top", str(top), "--folds", str(folds), "--overwrite")
        seconds["report"] = muratune("report", str(exp), "--overwrite")
    check_reused_refit(exp, top, folds)
    board = pd.read_csv(exp / "report" / "leaderboard.csv").set_index("name")
    row: dict[str, Any] = {"seed": seed, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for model in MODELS:
        row[model] = {"kappa": float(board.loc[model, "kappa_overall"]), "auc": float(board.loc[model, "auc"])}
    row["cv"]["oof_kappa"] = float(board.loc["cv", "oof_kappa"])
    return row


def check_reused_refit(exp: Path, top: int, folds: int) -> None:
    """Stop when a seed folder being read back holds a refit made with other ``--top``/``--folds``."""
    from muratune.refit.plan import RefitPlan

    plan = RefitPlan.read(exp / REFIT_DIR / REFIT_PLAN)
    made = (plan.requested_top, plan.folds)
    if made != (top, folds):
        raise SystemExit(f"{exp}: its refit used --top {made[0]} --folds {made[1]}; pass those or another --out")


def tta_seed(out: Path, seed: int) -> tuple[dict, Path]:
    """The seed's best-single, greedy and cv again with flip TTA, from its trained models, in ``seed-N/tta/``.

    Nothing is trained: a copy of the experiment's small files gets TTA ensembles (`build_ensembles`, selected on
    TTA internal-val predictions) and a TTA cv ensemble (`build_cv_ensemble`, selected on TTA out-of-fold ones).
    """
    from muratune.ensemble.build import build_ensembles
    from muratune.experiment_folder import load_resolved_config
    from muratune.refit.ensemble import CvSettings, build_cv_ensemble
    from muratune.refit.plan import RefitPlan

    exp = out / f"seed-{seed}" / "runs" / "demo"
    copy = out / f"seed-{seed}" / "tta" / "demo"
    if copy.exists():
        refuse_foreign(copy, EXPERIMENT_KIND)  # the copy this bench made last time (it carries the marker)
        shutil.rmtree(copy)
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns(TRIALS_DIR, "trials_test", "report", "cams", ENSEMBLE_DIR))
    build_ensembles(copy, strategies=["best-single", "greedy"], tta=True, overwrite=True, echo=lambda line: None)
    config = load_resolved_config(exp)
    plan = RefitPlan.read(exp / REFIT_DIR / REFIT_PLAN)
    refits = pd.read_csv(exp / REFIT_DIR / REFIT_SUMMARY, dtype={"trial_id": str, "configuration": str})
    settings = CvSettings(tta=True, overwrite=True)  # the refit's defaults, with TTA
    spec = build_cv_ensemble(copy, config, plan, refits, settings, echo=lambda line: None)
    row: dict[str, Any] = {"seed": seed, "seconds": {}}
    for model in MODELS:
        metrics = json.loads((copy / ENSEMBLE_DIR / model / TEST_METRICS).read_text())
        row[model] = {"kappa": metrics["test_kappa"], "auc": metrics["test_auc"]}
    row["cv"]["oof_kappa"] = spec["oof_score"]["oof_kappa"]
    return row, copy


def paired_test_studies(exp: Path) -> pd.DataFrame:
    """cv's and best-single's test predictions side by side, one row per test study (same order in every seed)."""
    frames = [
        pd.read_parquet(exp / ENSEMBLE_DIR / model / TEST_STUDIES).set_index(STUDY_PATH)[[BODY_PART, LABEL, PROB, PRED]]
        for model in ("cv", "best-single")
    ]
    paired = frames[0].join(frames[1][[PROB, PRED]], rsuffix="_single", how="inner").sort_index()
    return paired.reset_index()


def differences(paired: pd.DataFrame, counts: np.ndarray) -> dict[str, np.ndarray]:
    """cv minus best-single, in kappa and AUC: the observed value first, then one per bootstrap replicate."""
    labels = paired[LABEL].to_numpy(dtype=int)
    weights = np.vstack([np.ones(len(paired), dtype=np.int32), counts])
    kappas = {c: replicate_kappas(labels, paired[c].to_numpy(dtype=bool), weights) for c in (PRED, f"{PRED}_single")}
    aucs = {
        c: np.array([roc_auc_score(labels, paired[c], sample_weight=w) for w in weights])
        for c in (PROB, f"{PROB}_single")
    }
    return {"kappa": kappas[PRED] - kappas[f"{PRED}_single"], "auc": aucs[PROB] - aucs[f"{PROB}_single"]}


def paired_bootstrap(exps: dict[int, Path], seed: int = 0) -> dict:
    """cv minus best-single per seed and averaged over seeds, with 95% CIs from one stratified bootstrap.

    Every seed scores the same test studies, so one set of resampled studies (within body part, as the report
    does) serves every seed and the mean difference over seeds gets a CI that accounts for the shared test split.
    """
    tables = [paired_test_studies(exp) for exp in exps.values()]
    counts = resample_counts(tables[0][BODY_PART].to_numpy(), REPLICATES, seed)
    per_seed = []
    for paired in tables:
        if not (paired[STUDY_PATH].to_numpy() == tables[0][STUDY_PATH].to_numpy()).all():
            raise SystemExit("the seeds' test splits differ; a paired bootstrap over seeds needs the same data")
        per_seed.append(differences(paired, counts))
    mean = {m: np.mean([d[m] for d in per_seed], axis=0) for m in ("kappa", "auc")}
    shown = [*per_seed, mean]
    return {
        name: {m: [float(d[m][0]), *percentile_interval(d[m][1:])] for m in ("kappa", "auc")}
        for name, d in zip([*(str(s) for s in exps), "mean"], shown, strict=True)
    }


def summarise(rows: list[dict], top: int, folds: int, paired: dict) -> dict:
    """The targets (cv's AUC >= best-single's in every seed, cv's mean kappa above best-single's), and ``paired``."""
    mean_kappa = {m: statistics.fmean(r[m]["kappa"] for r in rows) for m in MODELS}
    mean_auc = {m: statistics.fmean(r[m]["auc"] for r in rows) for m in MODELS}
    auc_every_seed = all(r["cv"]["auc"] >= r["best-single"]["auc"] for r in rows)
    return {
        "seeds": [r["seed"] for r in rows],
        "top": top,
        "folds": folds,
        "per_seed": rows,
        "mean_kappa": mean_kappa,
        "mean_auc": mean_auc,
        "cv_auc_at_least_best_single_every_seed": auc_every_seed,
        "cv_mean_kappa_above_best_single": mean_kappa["cv"] > mean_kappa["best-single"],
        "cv_minus_best_single": paired,
    }


def table(summary: dict) -> str:
    """The per-seed table, then the means and the two targets."""
    lines = ["seed  " + "  ".join(f"{m + ' kappa / AUC':>24}" for m in MODELS) + "   cv oof kappa"]
    for r in summary["per_seed"]:
        cells = "  ".join(f"{r[m]['kappa']:>15.3f} / {r[m]['auc']:.3f}" for m in MODELS)
        lines.append(f"{r['seed']:>4}  {cells}   {r['cv']['oof_kappa']:.3f}")
    means = "  ".join(f"{summary['mean_kappa'][m]:>15.3f} / {summary['mean_auc'][m]:.3f}" for m in MODELS)
    lines.append(f"mean  {means}")
    lines.append(f"cv AUC >= best-single AUC in every seed: {summary['cv_auc_at_least_best_single_every_seed']}")
    lines.append(f"cv mean kappa > best-single mean kappa: {summary['cv_mean_kappa_above_best_single']}")
    lines.append(f"cv minus best-single on the test split, paired stratified bootstrap ({REPLICATES} replicates):")
    for name, diff in summary["cv_minus_best_single"].items():
        cells = "   ".join(f"{m} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, (d, lo, hi) in diff.items())
        lines.append(f"{name:>6}  {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/refit"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated search seeds")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--studies", type=int, default=None, help="studies (600); the train split's in hard mode")
    parser.add_argument("--tta", action="store_true", help="also score every model with flip TTA (no training)")
    parser.add_argument("--difficulty", default=None, help="hard mode: the synthetic data's difficulty (0.8)")
    parser.add_argument("--test-studies", type=int, default=None, help="hard mode: test studies (300, at least)")
    parser.add_argument("--refit-args", default="", help='hard mode: more refit options, e.g. "--epochs peak"')
    parser.add_argument("--variant", default=None, help="hard mode: the refit variant's folder name")
    args = parser.parse_args(argv)
    if args.difficulty is not None or args.test_studies is not None:
        from bench.refit_hard import run_hard

        args.difficulty = args.difficulty or "0.8"
        args.studies = args.studies or 540
        args.test_studies = args.test_studies or 300
        run_hard(args)
        return
    args.studies = args.studies or 600
    out = args.out.resolve()
    data = prepare_data(out, args.studies)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [run_seed(out, data, s, args.top, args.folds) for s in seeds]
    paired = paired_bootstrap({s: out / f"seed-{s}" / "runs" / "demo" for s in seeds})
    summary = summarise(rows, args.top, args.folds, paired)
    if args.tta:
        tta = [tta_seed(out, s) for s in seeds]
        tta_paired = paired_bootstrap({s: copy for s, (_, copy) in zip(seeds, tta, strict=True)})
        summary["tta"] = summarise([row for row, _ in tta], args.top, args.folds, tta_paired)
    write_json(out / "summary.json", summary)
    print(table(summary))
    if args.tta:
        print("\nwith flip TTA (best-single and greedy chosen on TTA internal val, cv on TTA out-of-fold predictions):")
        print(table(summary["tta"]))
    print(json.dumps({r["seed"]: r["seconds"] for r in rows}))


if __name__ == "__main__":
    main()
