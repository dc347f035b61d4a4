"""Benchmark: search efficiency of muratune's TPE+ASHA (PRUNED) vs Ray's stock OptunaSearch+ASHA vs random search.

Every method gets the same total budget of training epochs on the same synthetic data, for several seeds. It prints
the best internal-validation kappa against epochs consumed, and the epochs each method needs to reach the final best
of random search without early stopping (c). Targets: (a) reaches (c)'s final best with <= 50% of (c)'s epochs;
(a) is no worse than (b).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ray.tune import Stopper

METHODS = {
    "a_muratune_tpe_asha_pruned": {"optuna.sampler": "tpe", "optuna.prune_stopped_trials": True},
    "b_stock_optuna_asha": {"optuna.sampler": "tpe", "optuna.prune_stopped_trials": False},
    "c_random_no_stopping": {"optuna.sampler": "random", "budget.scheduler": "none"},
}


class EpochBudget(Stopper):
    """A Tune stopper that ends the whole search once ``total`` epochs have been trained (over all trials)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.used += 1
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
    return results[["epochs", "best"]]


def run_method(
    name: str, data: Path, storage: Path, seed: int, budget: int, max_epochs: int, startup: int
) -> pd.DataFrame:
    """Run one search with the shared epoch budget and return its curve."""
    from muratune.config import load_config
    from muratune.search import tuner

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    values = {"data.root": str(data), "storage": str(storage), "name": f"{name}-s{seed}",
              "budget.num_samples": 1000, "budget.max_epochs": max_epochs, "optuna.seed": seed,
              "train.seed": seed, "optuna.n_startup_trials": startup, **METHODS[name]}  # fmt: skip
    config = load_config(demo, values=values)
    tuner.prepare_experiment(config, resume=False, overwrite=True)
    tuner.build_tuner(config, stop=EpochBudget(budget), verbose=0).fit()
    return curve(tuner.experiment_dir(config) / tuner.TRIALS_DIR)


def epochs_to_reach(frame: pd.DataFrame, target: float) -> float:
    """First epoch count at which the best-so-far reaches ``target`` (inf if never)."""
    hit = frame[frame["best"] >= target - 1e-12]
    return float(hit["epochs"].iloc[0]) if len(hit) else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="existing synthetic dataset (default: generate one)")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument(
        "--difficulty", default="easy", help="synthetic difficulty (learning must start within max-epochs)"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=48, help="total epochs per search")
    parser.add_argument("--max-epochs", type=int, default=9, help="epochs of a full trial (ASHA rungs at 3 and 9)")
    parser.add_argument("--startup", type=int, default=3, help="TPE's random start-up trials")
    parser.add_argument("--out", type=Path, default=Path("bench-out/search_efficiency"), help="curves.csv, curves.png")
    args = parser.parse_args()

    import ray

    from muratune.search.tuner import connect_ray

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="muratune-eff-"))
    data = args.data
    if data is None:
        from muratune.data.synth import generate_dataset

        data = work / "data"
        generate_dataset(data, studies=args.studies, seed=0, difficulty=args.difficulty, long_side=256)
    connect_ray(None)
    curves: dict[str, list[pd.DataFrame]] = {name: [] for name in METHODS}
    try:
        for seed in range(args.seeds):
            for name in METHODS:
                run = run_method(name, data, work / "runs", seed, args.budget, args.max_epochs, args.startup)
                curves[name].append(run)
    finally:
        ray.shutdown()
    save_curves(curves, args.out)
    report(curves, args.budget)
    print(f"wall time {(time.perf_counter() - started) / 60:.1f} min; curves in {args.out}")


def save_curves(curves: dict[str, list[pd.DataFrame]], out: Path) -> None:
    """Write every best-so-far curve to ``curves.csv`` and draw the mean curve of each method to ``curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = [f.assign(method=name, seed=seed) for name, frames in curves.items() for seed, f in enumerate(frames)]
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


def report(curves: dict[str, list[pd.DataFrame]], budget: int) -> None:
    """Print mean best-so-far at budget fractions and epochs-to-target per seed."""
    checkpoints = [budget // 4, budget // 2, 3 * budget // 4, budget]
    print("best internal-val kappa (mean over seeds) after N epochs:")
    print("method".ljust(30) + "".join(f"{n:>8}" for n in checkpoints))
    for name, frames in curves.items():
        means = [np.mean([f[f.epochs <= n]["best"].max() for f in frames]) for n in checkpoints]
        print(name.ljust(30) + "".join(f"{m:8.3f}" for m in means))
    summary = {}
    for seed, random_curve in enumerate(curves["c_random_no_stopping"]):
        target = random_curve["best"].max()
        needed = {name: epochs_to_reach(frames[seed], target) for name, frames in curves.items()}
        summary[seed] = {"target": target, **needed}
        print(f"seed {seed}: (c) final best {target:.3f}; epochs to reach it: "
              + ", ".join(f"{k[:1]}={v:g}" for k, v in needed.items()))  # fmt: skip
    ratio = np.mean([s["a_muratune_tpe_asha_pruned"] / s["c_random_no_stopping"] for s in summary.values()])
    print(f"(a) epochs / (c) epochs to reach (c)'s final best: {ratio:.2f}  (target <= 0.50)")
    a_final = np.mean([f["best"].max() for f in curves["a_muratune_tpe_asha_pruned"]])
    b_final = np.mean([f["best"].max() for f in curves["b_stock_optuna_asha"]])
    print(f"final best (a) {a_final:.3f} vs (b) {b_final:.3f}  (target: a >= b)")
    print(json.dumps(summary, default=float))


if __name__ == "__main__":
    main()
