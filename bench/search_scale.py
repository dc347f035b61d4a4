"""Benchmark: search efficiency at cluster scale on LCBench's real learning curves (YAHPO Gym surrogate).

Each method searches LCBench's 7-hyperparameter MLP space on one OpenML task for a budget counted in epochs (a full
trial is 50 trained epochs, the surrogate's epochs 2-51; see bench/lcbench/surrogate.py). ``muratune`` is the
searcher and scheduler ``muratune search`` builds from a config; the others are Ray's stock pairings (see
bench/lcbench/methods.py). Trials run on ``--workers`` concurrent workers, each epoch taking the surrogate's time, in
a discrete-event simulation (bench/lcbench/simulate.py) or, with ``--backend tune``, in real Ray Tune
(bench/lcbench/real_tune.py). Measures per task, seed and method: best-so-far accuracy against epochs and simulated
time, the speedups over random search and over random-asha, the regret at the budget against the best of 10,000
random configurations, and the any-time measures (normalised regret against the share of the budget used, and each
method's rank over the budget; bench/lcbench/measures.py). bench/lcbench/jobs.py runs the searches; this module is
the command line.

    python -m bench.search_scale --workers 8 --out runs/bench/scale-w8
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.lcbench.jobs import run_jobs
from bench.lcbench.methods import METHODS
from bench.lcbench.report import CURVE_EVERY, aggregate, format_table, write_curves
from bench.lcbench.surrogate import BEST_KNOWN_JSON, DEV_TASKS, MAX_EPOCHS, Surrogate, best_known, default_surrogate_dir
from muratune.errors import UserError
from muratune.fileio import write_json

DEFAULT_BUDGET = 30 * MAX_EPOCHS
HELD_BACK = "held-back"  # --tasks: every LCBench task but the development ones, kept back for judging defaults
# --quick: 2 tasks, 2 seeds, 8 full trials, 4 methods
QUICK_TASKS = (3945, 7593)
QUICK_SEEDS = 2
QUICK_BUDGET = 8 * MAX_EPOCHS
QUICK_METHODS = ("muratune", "stock-optuna-asha", "random-asha", "random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks",
        default=",".join(map(str, DEV_TASKS)),
        help=f"comma-separated OpenML task ids (default: the development tasks), or {HELD_BACK!r} for the others",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task (first-seed..first-seed+N-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (fresh seeds check a choice)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent trials")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="epochs per search (a full trial is 50)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/search-scale"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="2 tasks, 2 seeds, 8 full trials, 4 methods")
    parser.add_argument("--surrogate", type=Path, default=None, help="LCBench folder (default ../shared/data/...)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for muratune's config")
    parser.add_argument("--backend", choices=("sim", "tune"), default="sim", help="simulation or real Ray Tune")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes (simulation)")
    parser.add_argument("--cache", type=Path, default=None, help=f"best-known cache (default OUT/../{BEST_KNOWN_JSON})")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.budget = ",".join(map(str, QUICK_TASKS)), QUICK_SEEDS, QUICK_BUDGET
        args.methods = ",".join(QUICK_METHODS)
    return args


def held_back_tasks(surrogate: Surrogate) -> list[int]:
    """The surrogate's tasks that are not development tasks: defaults are judged on them, never chosen."""
    return [t for t in surrogate.tasks() if t not in DEV_TASKS]


def _checked(args: argparse.Namespace) -> tuple[Path, list[int], list[str]]:
    folder = args.surrogate or default_surrogate_dir()
    if folder is None:
        raise UserError("--surrogate: no LCBench surrogate found; see docs/search-efficiency.md for where to get it")
    if args.tasks == HELD_BACK:
        tasks = held_back_tasks(Surrogate(Path(folder)))
    else:
        try:
            tasks = [int(t) for t in str(args.tasks).split(",") if t.strip()]
        except ValueError:
            raise UserError(
                f"--tasks {args.tasks!r}: expected comma-separated OpenML task ids or {HELD_BACK}"
            ) from None
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if "random" not in methods:
        raise UserError("--methods: must include 'random' (speedups are measured against it)")
    if args.budget < 1 or args.seeds < 1 or args.workers < 1 or args.first_seed < 0:
        raise UserError("--budget, --seeds and --workers must be at least 1, --first-seed at least 0")
    return Path(folder), tasks, methods


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write summary.json, curves.csv and curves.png, print the table; return the summary."""
    args = parse_args(argv)
    folder, tasks, methods = _checked(args)
    surrogate = Surrogate(folder)
    for task in tasks:
        surrogate.task_index(task)
    start, cpu_start = time.monotonic(), time.process_time()
    known = best_known(surrogate, tasks, args.cache or args.out.parent / BEST_KNOWN_JSON)
    jobs = [
        {"task": t, "seed": s, "method": m, "workers": args.workers, "budget": args.budget}
        | {"backend": args.backend, "overrides": args.overrides}
        for t in tasks
        for s in range(args.first_seed, args.first_seed + args.seeds)
        for m in methods
    ]
    runs = run_jobs(jobs, folder, args.jobs)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
    summary = aggregate(runs, known, tasks, args.seeds, args.workers, args.budget, methods, args.first_seed)
    summary.update(wall_s=round(time.monotonic() - start, 1), cpu_s=round(cpu_s, 1), backend=args.backend)
    summary.update(overrides=args.overrides, command=" ".join(["python -m bench.search_scale", *sys.argv[1:]]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "summary.json", summary)
    write_curves(runs, known, args.out, every=CURVE_EVERY, budget=args.budget)
    print(format_table(summary))
    print(f"\nwrote {args.out}/summary.json, curves.csv, curves.png ({summary['wall_s']} s, CPU {summary['cpu_s']} s)")
    return summary


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
