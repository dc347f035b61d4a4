"""Benchmark: search efficiency of muratune's TPE+ASHA (PRUNED) vs Ray's stock OptunaSearch+ASHA vs random search.

Every method gets the same total budget of training epochs on the same synthetic data, for several seeds. It prints
the best internal-validation kappa against epochs consumed, and the epochs each method needs to reach the final best
of random search without early stopping (c), on the seed-mean curves and per seed. Targets: (a) reaches (c)'s final
best with <= 50% of (c)'s epochs; (a) is no worse than (b). (d) is the rung-model sampler (``optuna.sampler:
rung-tpe``) on the same stopping-type ASHA, muratune's default before stop 38: its check is that it does no harm
against (a), plain TPE. (e) is (d) with promotion-type ASHA and Sobol start-up trials (``budget.scheduler:
asha-promotion``, ``optuna.startup: sobol``), muratune's default since: its check is that it does no harm against
(d). Every method keeps the demo config's 2 start-up trials per worker.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ray.tune import Stopper

STOPPING = {"budget.scheduler": "asha"}  # stopping-type ASHA, muratune's default before promotion-type ASHA
METHODS: dict[str, dict[str, object]] = {
    "a_muratune_tpe_asha_pruned": {"optuna.sampler": "tpe", "optuna.prune_stopped_trials": True, **STOPPING},
    "b_stock_optuna_asha": {"optuna.sampler": "tpe", "optuna.prune_stopped_trials": False, **STOPPING},
    "c_random_no_stopping": {"optuna.sampler": "random", "budget.scheduler": "none"},
    "d_muratune_rung_tpe_asha": {"optuna.sampler": "rung-tpe", "optuna.prune_stopped_trials": True, **STOPPING},
    "e_muratune_promotion_sobol": {
        "optuna.sampler": "rung-tpe",
        "optuna.prune_stopped_trials": True,
        "budget.scheduler": "asha-promotion",
        "optuna.startup": "sobol",
    },
}


def chosen_methods(letters: str) -> list[str]:
    """The methods named by their letters (``a,c,d``), in `METHODS` order."""
    wanted = {letter.strip() for letter in letters.split(",") if letter.strip()}
    unknown = wanted - {name[0] for name in METHODS}
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    return [name for name in METHODS if name[0] in wanted]


class EpochBudget(Stopper):
    """A Tune stopper that ends the whole search once ``total`` epochs have been trained (over all trials).

    It counts distinct (trial, training_iteration) pairs: when a function trainable returns, Tune passes its last
    result through the stopper a second time (marked done), which must not be charged as another epoch.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen: set[tuple[str, int]] = set()

    @property
    def used(self) -> int:
        return len(self.seen)

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.seen.add((trial_id, int(result.get("training_iteration", 0))))
        return False

    def stop_all(self) -> bool:
        return self.used >= self.total


def curve(trials_dir: Path) -> pd.DataFrame:
    """Best-so-far kappa against epochs consumed, in the order results were produced."""
    rows = []
    for progress in trials_dir.glob("trial_*/progress.csv"):
        frame = pd.read_csv(progress)
        rows.append(frame[["timestamp", "val_kappa"]].assign(trial=progress.parent.name))
    results = pd.concat(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)
    results["epochs"] = np.arange(1, len(results) + 1)
    results["best"] = results["val_kappa"].cummax()
    return results[["epochs", "best", "trial"]]


def run_method(name: str, data: Path, storage: Path, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    """Run one search with the shared epoch budget and return its curve."""
    from muratune import layout
    from muratune.config import load_config
    from muratune.search.experiment import prepare_experiment
    from muratune.search.factories import create_tuner

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    values = {
        "data.root": str(data),
        "storage": str(storage),
        "name": f"{name}-s{seed}",
        "data.val_fraction": args.val_fraction,
        "data.image_size": args.image_size,
        "space.backbone": {"type": "choice", "values": args.backbones.split(",")},
        "space.lr": {"type": "loguniform", "low": args.lr_low, "high": args.lr_high},
        "budget.num_samples": 1000,
        "budget.max_epochs": args.max_epochs,
        "budget.grace_period": args.grace_period,
        "budget.reduction_factor": 3,
        "resources.cpus_per_trial": 2 / args.concurrency,
        "resources.max_concurrent_trials": args.concurrency,
        "optuna.seed": seed,
        "train.seed": seed,
        "optuna.n_startup_trials": args.startup,
        **METHODS[name],
    }
    config = load_config(demo, values=values)
    prepare_experiment(config, resume=False, overwrite=True)
    create_tuner(config, stop=EpochBudget(args.budget), verbose=0).fit()
    return curve(layout.experiment_dir(config) / layout.TRIALS_DIR)


def epochs_to_reach(frame: pd.DataFrame, target: float) -> float:
    """First epoch count at which the best-so-far reaches ``target`` (inf if never)."""
    hit = frame[frame["best"] >= target - 1e-12]
    return float(hit["epochs"].iloc[0]) if len(hit) else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="existing synthetic dataset (default: generate one)")
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument(
        "--difficulty", default="easy", help="synthetic difficulty (learning must start within max-epochs)"
    )
    parser.add_argument(
        "--image-size", type=int, default=32, help="input px (32 learnt as well as 48 here, at 2/3 the time)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.3, help="internal validation share (less kappa noise)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed..first-seed+seeds-1 (to add seeds)")
    parser.add_argument("--budget", type=int, default=72, help="total epochs per search (8 full trials)")
    parser.add_argument("--max-epochs", type=int, default=9, help="epochs of a full trial")
    parser.add_argument("--grace-period", type=int, default=3, help="ASHA's first rung (rungs at 3 and 9)")
    parser.add_argument("--startup", type=int, default=3, help="TPE's random start-up trials")
    parser.add_argument("--backbones", default="resnet10t", help="comma-separated timm backbones searched")
    parser.add_argument("--lr-low", type=float, default=1e-5, help="learning-rate range searched (log-uniform)")
    parser.add_argument("--lr-high", type=float, default=1e-2)
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (2 CPUs shared between them)")
    parser.add_argument("--methods", default="a,b,c,d", help="the methods' letters (a, b, c, d, e), comma-separated")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary data and checkpoints")
    parser.add_argument("--out", type=Path, default=Path("bench-out/search_efficiency"), help="curves.csv, curves.png")
    args = parser.parse_args()

    import ray

    from muratune.cluster import connect_ray

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="muratune-eff-"))
    data = args.data
    if data is None:
        from muratune.data.synth import generate_dataset

        data = work / "data"
        generate_dataset(data, studies=args.studies, seed=0, difficulty=args.difficulty, long_side=256)
    methods = chosen_methods(args.methods)
    connect_ray(None)
    curves: dict[str, list[pd.DataFrame]] = {name: [] for name in methods}
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for name in methods:
                run = run_method(name, data, work / "runs", seed, args)
                curves[name].append(run)
    finally:
        ray.shutdown()
        keep_trial_logs(work / "runs", args.out / "trials")
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)  # checkpoints: about 10 GB per run at the defaults
    save_curves(curves, args.out, args.first_seed)
    report(curves, args.budget)
    print(f"wall time {(time.perf_counter() - started) / 60:.1f} min; curves and trial logs in {args.out}")


def keep_trial_logs(runs: Path, out: Path) -> None:
    """Copy each trial's ``progress.csv`` and ``params.json`` (not its checkpoints) to ``out/<search>/<trial>/``."""
    for log in [*runs.glob("*/trials/trial_*/progress.csv"), *runs.glob("*/trials/trial_*/params.json")]:
        search, trial = log.parents[2].name, log.parent.name
        (out / search / trial).mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, out / search / trial / log.name)


def save_curves(curves: dict[str, list[pd.DataFrame]], out: Path, first_seed: int = 0) -> None:
    """Write every best-so-far curve to ``curves.csv`` and draw the mean curve of each method to ``curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = [
        f.assign(method=name, seed=seed)
        for name, frames in curves.items()
        for seed, f in enumerate(frames, start=first_seed)
    ]
    pd.concat(rows).to_csv(out / "curves.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, frames in curves.items():
        longest = max(len(f) for f in frames)
        grid = np.arange(1, longest + 1)
        best = [np.interp(grid, f["epochs"], f["best"], right=f["best"].iloc[-1]) for f in frames]
        ax.plot(grid, np.mean(best, axis=0), label=name)
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel("best internal-val kappa (mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)


def best_at(frame: pd.DataFrame, epochs: int) -> float:
    """Best-so-far kappa after ``epochs`` epochs (NaN before the first result)."""
    seen = frame[frame["epochs"] <= epochs]["best"]
    return float(seen.max()) if len(seen) else float("nan")


def mean_curve(frames: list[pd.DataFrame], budget: int) -> np.ndarray:
    """Mean over seeds of the best-so-far kappa after 1..budget epochs."""
    return np.array([np.nanmean([best_at(f, n) for f in frames]) for n in range(1, budget + 1)])


def first_reaching(values: np.ndarray, target: float) -> float:
    """1-based index of the first value >= target (inf if none)."""
    hits = np.flatnonzero(values >= target - 1e-12)
    return float(hits[0] + 1) if len(hits) else float("inf")


def report(curves: dict[str, list[pd.DataFrame]], budget: int) -> None:
    """Print the mean best-so-far against epochs, epochs to reach (c)'s final best, and the targets of the methods
    present: (a) against (c) and (b), and (d) against (a)."""
    by_letter = {name[0]: name for name in curves}
    means = {name: mean_curve(frames, budget) for name, frames in curves.items()}
    checkpoints = [budget // 6, budget // 3, budget // 2, 2 * budget // 3, 5 * budget // 6, budget]
    print("best internal-val kappa (mean over seeds) after N epochs:")
    print("method".ljust(30) + "".join(f"{n:>7}" for n in checkpoints))
    for name in curves:
        print(name.ljust(30) + "".join(f"{means[name][n - 1]:7.3f}" for n in checkpoints))
    trials = {name[:1]: np.mean([f["trial"].nunique() for f in frames]) for name, frames in curves.items()}
    print("configurations tried per search (mean over seeds): " + ", ".join(f"{k}={v:.1f}" for k, v in trials.items()))
    if "c" in by_letter:
        report_against_random(curves, means, by_letter, budget)
    if "a" in by_letter and "b" in by_letter:
        a, b = means[by_letter["a"]], means[by_letter["b"]]
        verdict = "met" if a[-1] >= b[-1] else "NOT MET"
        print(
            f"final best (a) {a[-1]:.3f} vs (b) {b[-1]:.3f} (target: a >= b) -> {verdict}; "
            f"area under the curve (a) {a.mean():.3f} vs (b) {b.mean():.3f}"
        )
    if "a" in by_letter and "d" in by_letter:
        report_no_harm("(d) rung-tpe minus (a) tpe", curves[by_letter["a"]], curves[by_letter["d"]], budget)
    if "d" in by_letter and "e" in by_letter:
        label = "(e) promotion + sobol minus (d) rung-tpe"
        report_no_harm(label, curves[by_letter["d"]], curves[by_letter["e"]], budget)


def report_against_random(
    curves: dict[str, list[pd.DataFrame]], means: dict[str, np.ndarray], by_letter: dict[str, str], budget: int
) -> None:
    """Epochs each method needs to reach (c)'s final best, on the mean curves and per seed; (a)'s target."""
    c = by_letter["c"]
    target = means[c][-1]
    needed = {name: first_reaching(means[name], target) for name in curves}
    print(
        f"mean curves: (c)'s final best {target:.3f} is reached after "
        + ", ".join(f"{k[:1]}={v:g}" for k, v in needed.items())
        + " epochs"
    )
    per_seed = []
    for seed, random_curve in enumerate(curves[c]):
        seed_target = best_at(random_curve, budget)
        reach = {
            name: first_reaching(mean_curve([frames[seed]], budget), seed_target) for name, frames in curves.items()
        }
        if "a" in by_letter:
            per_seed.append(reach[by_letter["a"]] / reach[c])
        print(
            f"  seed {seed}: (c) final best {seed_target:.3f}; epochs to reach it: "
            + ", ".join(f"{k[:1]}={v:g}" for k, v in reach.items())
        )
    if "a" in by_letter:
        ratio = needed[by_letter["a"]] / needed[c]
        verdict = "met" if ratio <= 0.5 else "NOT MET"
        print(f"(a) / (c) epochs to reach (c)'s final best, mean curves: {ratio:.2f} (target <= 0.50) -> {verdict}")
        print(f"  per seed: {', '.join(f'{r:.2f}' for r in per_seed)}")


def report_no_harm(label: str, base: list[pd.DataFrame], candidate: list[pd.DataFrame], budget: int) -> None:
    """``candidate`` minus ``base``, seed by seed: the final best and the mean best-so-far over the budget (no harm:
    not below)."""
    pairs = list(zip(base, candidate, strict=True))
    final = [best_at(d, budget) - best_at(a, budget) for a, d in pairs]
    area = [float(mean_curve([d], budget).mean() - mean_curve([a], budget).mean()) for a, d in pairs]
    print(
        f"{label}, per seed: final best "
        + ", ".join(f"{x:+.3f}" for x in final)
        + f" (mean {np.mean(final):+.3f}); mean best-so-far "
        + ", ".join(f"{x:+.3f}" for x in area)
        + f" (mean {np.mean(area):+.3f})"
    )


if __name__ == "__main__":
    main()
