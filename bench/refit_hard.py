"""The hard mode of ``bench.refit_cv``: harder data, a big test split, one search per seed and many refit variants.

Each seed's search and its internal-val ensembles (best-single, greedy) are made once, in ``seed-N/runs/demo``.
Each refit variant (its ``muratune refit`` options) runs in its own copy of that experiment,
``seed-N/refit/<variant>/demo`` (files hard-linked, so the search is shared, not retrained), so several variants are
compared on the same searches. A variant already built is read back, not rerun.

    python -m bench.refit_cv --out runs/bench/refit-hard --difficulty 0.8 --studies 540 --test-studies 300 \\
        --top 2 --folds 3 --seeds 0,1,2,3,4
    python -m bench.refit_cv --out runs/bench/refit-hard --difficulty 0.8 --studies 540 --test-studies 300 \\
        --top 2 --folds 3 --seeds 0,1,2,3,4 --refit-args "--epochs peak"     # another variant, same searches
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bench.refit_cv import REPLICATES, muratune
from muratune.constants import BODY_PART, LABEL, PRED, PROB, STUDY_PATH
from muratune.demo import DEMO_CONFIG, demo_config_text, usable_cores
from muratune.fileio import refuse_foreign, write_json, write_text
from muratune.layout import (
    CAMS_DIR,
    DEFAULT_PREDICTOR,
    ENSEMBLE_DIR,
    EXPERIMENT_KIND,
    REFIT_DIR,
    REPORT_DIR,
    TEST_METRICS,
    TEST_STUDIES,
)
from muratune.metrics import calibration_metrics, chance_ece
from muratune.report.bootstrap import percentile_interval, replicate_kappas, resample_counts
from muratune.schemas import read_default_choice

BASELINE = "best-single"
STRATEGIES = ("best-single", "greedy", "cv", "cv-full", "default")  # cv-full where the variant built it (--full)
DEFAULT = "default"  # the predictor `muratune refit` chose (ensemble/default.json), whichever strategy it is
MIN_TEST_STUDIES = 300  # a difference of 0.03 in AUC is decidable from about this many test studies


def already_made(data: Path, record: Path, wanted: dict) -> bool:
    """Whether ``data`` holds a dataset made with ``wanted`` (its ``record``); one made otherwise is refused."""
    if not (data / "MURA-v1.1").exists():
        return False
    made = json.loads(record.read_text()) if record.exists() else None
    if made != wanted:
        raise SystemExit(f"{data} was made with {made}, not {wanted}; pass those or another --out")
    return True


def prepare_hard_data(out: Path, train: int, test: int, difficulty: str) -> Path:
    """Synthetic data with ``train`` and ``test`` studies at ``difficulty`` (data seed 0), written and cached once."""
    data = out / "data"
    wanted = {"train_studies": train, "test_studies": test, "difficulty": difficulty, "seed": 0}
    record = out / "data.json"
    if already_made(data, record, wanted):
        return data
    total = train + test
    share = repr(test / total)
    muratune("data", "synth", str(data), "--studies", str(total), "--valid-share", share, "--difficulty", difficulty)
    muratune("data", "cache", str(data), "--size", "64")
    write_json(record, wanted)
    return data


def search_seed(out: Path, data: Path, seed: int) -> tuple[Path, dict]:
    """The seed's search and internal-val ensembles, once; the experiment folder and the stage times."""
    seed_dir = out / f"seed-{seed}"
    exp = seed_dir / "runs" / "demo"
    seconds: dict[str, float] = {}
    if not (exp / ENSEMBLE_DIR / "greedy" / TEST_METRICS).exists():
        seed_dir.mkdir(parents=True, exist_ok=True)
        config = seed_dir / DEMO_CONFIG
        write_text(config, demo_config_text())
        cores = f"resources.cpus_per_trial={max(1, usable_cores() // 2)}"
        sets = [f"storage={seed_dir / 'runs'}", f"optuna.seed={seed}", f"train.seed={seed}", cores]
        options = [item for s in sets for item in ("--set", s)]
        seconds["search"] = muratune("search", str(config), "--data", str(data), *options, "--overwrite")
        seconds["ensemble"] = muratune("ensemble", str(exp), "--overwrite")
    return exp, seconds


def variant_name(top: int, folds: int, refit_args: str) -> str:
    """A folder name for a refit variant: ``top2-folds3``, then its extra options (``top2-folds3-epochs-peak``)."""
    extra = re.sub(r"[^A-Za-z0-9]+", "-", refit_args).strip("-")
    return f"top{top}-folds{folds}" + (f"-{extra}" if extra else "")


def refit_variant(exp: Path, variant: str, top: int, folds: int, refit_args: str) -> tuple[Path, dict]:
    """The variant's refit in a hard-linked copy of the seed's experiment (``seed-N/refit/<variant>/demo``), once."""
    copy = exp.parent.parent / "refit" / variant / "demo"
    seconds: dict[str, float] = {}
    if (copy / ENSEMBLE_DIR / "cv" / TEST_METRICS).exists():
        return copy, seconds
    if copy.exists():
        refuse_foreign(copy, EXPERIMENT_KIND)  # an unfinished copy this bench made (it carries the marker)
        shutil.rmtree(copy)
    skipped = shutil.ignore_patterns(REFIT_DIR, REPORT_DIR, CAMS_DIR)
    shutil.copytree(exp, copy, ignore=skipped, copy_function=os.link)
    shutil.rmtree(copy / ENSEMBLE_DIR / "cv", ignore_errors=True)
    options = ["--top", str(top), "--folds", str(folds), *shlex.split(refit_args)]
    seconds["refit"] = muratune("refit", str(copy), *options, "--overwrite")
    return copy, seconds


def strategy_dirs(exp: Path, copy: Path) -> dict[str, Path]:
    """Each strategy's ensemble folder: best-single, greedy from the search; cv, cv-full from the variant's copy."""
    dirs = {
        "best-single": exp / ENSEMBLE_DIR / "best-single",
        "greedy": exp / ENSEMBLE_DIR / "greedy",
        "cv": copy / ENSEMBLE_DIR / "cv",
        "cv-full": copy / ENSEMBLE_DIR / "cv-full",
    }
    found = {m: path for m, path in dirs.items() if (path / TEST_METRICS).is_file()}
    record = copy / ENSEMBLE_DIR / DEFAULT_PREDICTOR  # the predictor `muratune refit` chose, if it chose one
    chosen = read_default_choice(record).predictor if record.is_file() else None
    if chosen in found:
        found[DEFAULT] = found[chosen]
    return found


def strategies_of(dirs: dict[int, dict[str, Path]]) -> list[str]:
    """The strategies every seed has, in `STRATEGIES` order (cv-full only where every seed's refit built it)."""
    return [m for m in STRATEGIES if all(m in d for d in dirs.values())]


def strategy_figures(folder: Path) -> dict[str, Any]:
    """Test kappa, AUC, ECE and Brier of one ensemble (ECE and Brier computed where test_metrics.json lacks them)."""
    metrics = json.loads((folder / TEST_METRICS).read_text())
    studies = pd.read_parquet(folder / TEST_STUDIES)
    if metrics.get("test_ece") is None:
        metrics |= calibration_metrics(studies, "test")
    keys = ("test_kappa", "test_auc", "test_ece", "test_brier", "test_ece_uncalibrated", "test_brier_uncalibrated")
    figures = {key.removeprefix("test_"): metrics[key] for key in keys if metrics.get(key) is not None}
    figures["ece_by_chance"] = chance_ece(studies[PROB].to_numpy())
    spec = json.loads((folder / "ensemble.json").read_text())
    if spec.get("oof_score"):
        figures["oof_kappa"] = spec["oof_score"].get("oof_kappa")
        figures["selection"] = f"{spec.get('selected_strategy')}: {', '.join(spec.get('configurations', {}))}"
    return figures


def seed_figures(dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each strategy's figures for one seed; the default's are those of the strategy it is, with its name."""
    figures = {m: strategy_figures(path) for m, path in dirs.items() if m != DEFAULT}
    if DEFAULT in dirs:
        chosen = next(m for m, path in dirs.items() if m != DEFAULT and path == dirs[DEFAULT])
        figures[DEFAULT] = figures[chosen] | {"predictor": chosen}
    return figures


def test_table(folder: Path) -> pd.DataFrame:
    """One ensemble's test studies (label, probability, prediction), sorted by study."""
    columns = [STUDY_PATH, BODY_PART, LABEL, PROB, PRED]
    return pd.read_parquet(folder / TEST_STUDIES)[columns].sort_values(STUDY_PATH).reset_index(drop=True)


def replicate_scores(table: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Kappa and AUC of one model's test studies, observed first, then one per bootstrap replicate."""
    labels = table[LABEL].to_numpy(dtype=int)
    probs = table[PROB].fillna(0.5).to_numpy()
    return {
        "kappa": replicate_kappas(labels, table[PRED].fillna(False).to_numpy(dtype=bool), weights),
        "auc": np.array([roc_auc_score(labels, probs, sample_weight=w) for w in weights]),
    }


def paired_differences(dirs: dict[int, dict[str, Path]], seed: int = 0) -> dict:
    """Each strategy minus best-single per seed and averaged over seeds, with 95% CIs from one stratified bootstrap.

    Every seed and strategy scores the same test studies, so one set of resampled studies (within body part) serves
    them all, and the mean over seeds gets an interval that accounts for the shared test split.
    """
    models = strategies_of(dirs)
    tables = {s: {m: test_table(d[m]) for m in models} for s, d in dirs.items()}
    first = next(iter(tables.values()))[BASELINE]
    for per_model in tables.values():
        for table in per_model.values():
            if not table[STUDY_PATH].equals(first[STUDY_PATH]):
                raise SystemExit("the test splits differ; a paired bootstrap needs the same test studies")
    counts = resample_counts(first[BODY_PART].to_numpy(), REPLICATES, seed)
    weights = np.vstack([np.ones(len(first), dtype=np.int32), counts])
    scores = {s: {m: replicate_scores(t, weights) for m, t in per_model.items()} for s, per_model in tables.items()}
    result: dict[str, dict] = {}
    for model in models[1:]:
        diffs = {str(s): {k: sc[model][k] - sc[BASELINE][k] for k in ("kappa", "auc")} for s, sc in scores.items()}
        diffs["mean"] = {k: np.mean([d[k] for d in diffs.values()], axis=0) for k in ("kappa", "auc")}
        result[model] = {
            s: {k: [float(v[0]), *percentile_interval(v[1:])] for k, v in d.items()} for s, d in diffs.items()
        }
    return result


def hard_summary(rows: list[dict], paired: dict, settings: dict) -> dict:
    """Per-seed figures, their means over seeds, and the paired differences against best-single."""
    keys = ("kappa", "auc", "ece", "brier", "ece_by_chance", "ece_uncalibrated", "brier_uncalibrated")
    models = [m for m in STRATEGIES if all(m in r for r in rows)]
    means = {
        m: {k: statistics.fmean(r[m][k] for r in rows) for k in keys if all(k in r[m] for r in rows)} for m in models
    }
    return {
        **settings,
        "seeds": [r["seed"] for r in rows],
        "per_seed": rows,
        "mean": means,
        "ece_over_uncalibrated": {
            m: v["ece"] / v["ece_uncalibrated"] for m, v in means.items() if "ece_uncalibrated" in v
        },
        "minus_best_single": paired,
    }


def hard_table(summary: dict) -> str:
    """The per-seed table (kappa / AUC / ECE per strategy), the means, and the paired CIs."""
    models = list(summary["mean"])
    head = "  ".join(f"{m + ' kappa / AUC / ECE':>28}" for m in models)
    lines = [f"variant {summary['variant']}", f"seed  {head}   cv oof kappa"]
    for r in [*summary["per_seed"], {"seed": "mean", **summary["mean"]}]:
        cells = "  ".join(f"{r[m]['kappa']:>12.3f} / {r[m]['auc']:.3f} / {r[m]['ece']:.3f}" for m in models)
        oof = r["cv"].get("oof_kappa")
        lines.append(f"{r['seed']:>4}  {cells}   {'' if oof is None else f'{oof:.3f}'}")
    if DEFAULT in models:
        chosen = ", ".join(f"{r['seed']}: {r[DEFAULT]['predictor']}" for r in summary["per_seed"])
        lines.append(f"default predictor per seed (muratune refit's choice): {chosen}")
    lines.append("calibration, mean over seeds: ECE (uncalibrated; by chance alone for a calibrated model)")
    for m, v in summary["mean"].items():
        before = f"{v['ece_uncalibrated']:.3f}" if "ece_uncalibrated" in v else "  -  "
        ratio = summary["ece_over_uncalibrated"].get(m)
        cell = f"   calibrated / uncalibrated {ratio:.2f}" if ratio is not None else ""
        lines.append(f"{m:>12}  {v['ece']:.3f} ({before}; {v['ece_by_chance']:.3f}){cell}")
    lines.append(f"minus best-single on the same test studies, paired stratified bootstrap ({REPLICATES} replicates):")
    for model, per_seed in summary["minus_best_single"].items():
        for name, diff in per_seed.items():
            cells = "   ".join(f"{k} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for k, (d, lo, hi) in diff.items())
            lines.append(f"{model:>8} {name:>5}  {cells}")
    return "\n".join(lines)


def run_hard(args: Any) -> None:
    """The hard mode: data, one search per seed, the refit variant, the table and ``summary-<variant>.json``."""
    if args.test_studies < MIN_TEST_STUDIES:
        raise SystemExit(f"--test-studies {args.test_studies}: use at least {MIN_TEST_STUDIES}")
    out = args.out.resolve()
    data = prepare_hard_data(out, args.studies, args.test_studies, args.difficulty)
    variant = args.variant or variant_name(args.top, args.folds, args.refit_args)
    rows, dirs = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        exp, seconds = search_seed(out, data, seed)
        copy, refit_seconds = refit_variant(exp, variant, args.top, args.folds, args.refit_args)
        dirs[seed] = strategy_dirs(exp, copy)
        row = {"seed": seed, "seconds": {k: round(v, 1) for k, v in (seconds | refit_seconds).items()}}
        rows.append(row | seed_figures(dirs[seed]))
    rows = [{k: v for k, v in r.items() if k not in STRATEGIES or k in strategies_of(dirs)} for r in rows]
    settings = {"variant": variant, "top": args.top, "folds": args.folds, "refit_args": args.refit_args}
    summary = hard_summary(rows, paired_differences(dirs), settings)
    write_json(out / f"summary-{variant}.json", summary)
    print(hard_table(summary))
    print(json.dumps({r["seed"]: r["seconds"] for r in rows}))
