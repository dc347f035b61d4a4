"""Score a hard ``bench.refit_cv`` run's predictors again on a second, larger test set from the same generator.

The hard benchmark's 300 test studies decide a kappa or AUC difference, but not calibration: a perfectly calibrated
model shows an ECE of about 0.05 on 300 studies by chance alone (``muratune.metrics.chance_ece``). This draws a
second test set from the same synthetic generator (same difficulty, data seed 1, only its valid split used), scores
every seed's best-single, greedy, cv, cv-full and default predictor on it, as muratune scores its test split
(probabilities calibrated and not), and prints the hard benchmark's table for it.

    python -m bench.refit_holdout --out runs/bench/refit-hard --seeds 0,1,2,3,4 --variant top2-folds3 \\
        --studies 1500 --difficulty 0.8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.refit_cv import muratune
from bench.refit_hard import (
    DEFAULT,
    already_made,
    hard_summary,
    hard_table,
    paired_differences,
    seed_figures,
    strategies_of,
    strategy_dirs,
)
from muratune.constants import SPLIT, SPLIT_VALID
from muratune.data.index import load_index
from muratune.ensemble.load import load_ensemble
from muratune.ensemble.scoring import scored_studies, test_metrics
from muratune.fileio import atomic_path, write_json
from muratune.layout import ENSEMBLE_FILE, TEST_METRICS, TEST_STUDIES

HOLDOUT_SEED = 1  # the hard benchmark's data is seed 0


def prepare_holdout(out: Path, studies: int, difficulty: str) -> Path:
    """``out/holdout``: a synthetic dataset of ``studies`` studies, nearly all in its valid split, made once."""
    data = out / "holdout"
    wanted = {"studies": studies, "difficulty": difficulty, "seed": HOLDOUT_SEED}
    record = out / "holdout.json"
    if already_made(data, record, wanted):
        return data
    share = repr(1 - 10 / studies)  # a token train split (the CSV layout wants one); the rest is the test set
    options = [
        "--studies",
        str(studies),
        "--valid-share",
        share,
        "--difficulty",
        difficulty,
        "--seed",
        str(HOLDOUT_SEED),
    ]
    muratune("data", "synth", str(data), *options)
    write_json(record, wanted)
    return data


def score_folder(ensemble: Path, test, root: Path, folder: Path) -> None:
    """One predictor on the holdout's test images: ``test_studies.parquet``, ``test_metrics.json`` and its spec."""
    current = json.loads((ensemble / ENSEMBLE_FILE).read_text())
    if (folder / TEST_METRICS).is_file() and json.loads((folder / ENSEMBLE_FILE).read_text()) == current:
        return  # scored before, and the ensemble has not been rebuilt since
    predictor = load_ensemble(ensemble)
    probs = predictor.image_probs(test, root=root, progress=True)
    studies = scored_studies(test, probs, predictor.thresholds, predictor.calibration)
    with atomic_path(folder / TEST_STUDIES) as tmp:
        studies.to_parquet(tmp, index=False)
    write_json(folder / ENSEMBLE_FILE, current)
    write_json(folder / TEST_METRICS, test_metrics(studies, predictor.thresholds))


def score_seed(out: Path, seed: int, variant: str, test, root: Path) -> dict[str, Path]:
    """Every strategy of one seed scored on the holdout, in ``holdout-scores/<variant>/seed-N/<strategy>``; the
    default maps to the folder of the strategy it is."""
    exp = out / f"seed-{seed}" / "runs" / "demo"
    copy = out / f"seed-{seed}" / "refit" / variant / "demo"
    ensembles = strategy_dirs(exp, copy)
    scored = {}
    for strategy, ensemble in ensembles.items():
        folder = out / "holdout-scores" / variant / f"seed-{seed}" / strategy
        if strategy != DEFAULT:
            print(f"seed {seed}: {strategy} on the holdout test set", flush=True)
            score_folder(ensemble, test, root, folder)
        scored[strategy] = folder
    if DEFAULT in ensembles:
        scored[DEFAULT] = next(scored[m] for m, e in ensembles.items() if m != DEFAULT and e == ensembles[DEFAULT])
    return scored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/refit-hard"), help="the hard benchmark's --out")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variant", default="top2-folds3", help="the refit variant to score")
    parser.add_argument("--studies", type=int, default=1500, help="holdout studies (about 3,500 images)")
    parser.add_argument("--difficulty", default="0.8", help="the hard benchmark's --difficulty")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    data = prepare_holdout(out, args.studies, args.difficulty)
    index = load_index(data)
    test = index[index[SPLIT] == SPLIT_VALID].reset_index(drop=True)
    dirs, rows = {}, []
    for seed in (int(s) for s in args.seeds.split(",")):
        dirs[seed] = score_seed(out, seed, args.variant, test, Path(index.attrs["root"]))
        rows.append({"seed": seed, "seconds": {}} | seed_figures(dirs[seed]))
    rows = [{k: v for k, v in r.items() if k in ("seed", "seconds") or k in strategies_of(dirs)} for r in rows]
    settings = {"variant": f"{args.variant} on the holdout ({len(test.drop_duplicates('study_path'))} test studies)"}
    summary = hard_summary(rows, paired_differences(dirs), settings | {"holdout": str(data)})
    write_json(out / f"holdout-{args.variant}.json", summary)
    print(hard_table(summary))


if __name__ == "__main__":
    main()
