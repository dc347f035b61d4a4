"""Running the scale benchmark's searches: one (task, seed, method) each, simulated or in real Ray Tune, in a pool."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.lcbench.measures import RunCurve
from bench.lcbench.methods import build_method
from bench.lcbench.simulate import Event, SimController
from bench.lcbench.surrogate import MAX_EPOCHS, Surrogate

_SURROGATE: Surrogate | None = None


def simulate(
    surrogate: Surrogate,
    task: int,
    method: str,
    seed: int,
    workers: int,
    budget: int,
    overrides: list[str] | None = None,
) -> tuple[list[Event], SimController]:
    """One simulated search; returns its epochs in the order they finished, and the controller (its trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher, scheduler = build_method(method, seed, workers, overrides, budget=budget)
    controller = SimController(searcher, scheduler, lambda h: surrogate.curve(task, h), workers, budget, MAX_EPOCHS)
    return controller.run(), controller


def _init_worker(folder: str) -> None:
    global _SURROGATE
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)
    _SURROGATE = Surrogate(folder)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one (task, seed, method) search in a pool worker; return its curve and counts."""
    assert _SURROGATE is not None
    if job["backend"] == "tune":
        from bench.lcbench.real_tune import run_tune

        events = run_tune(_SURROGATE.folder, job["task"], job["method"], job["seed"], job["workers"], job["budget"])
        trials = len({e.trial_id for e in events})
    else:
        events, controller = simulate(
            _SURROGATE, job["task"], job["method"], job["seed"], job["workers"], job["budget"], job["overrides"]
        )
        trials = len(controller.trials)
    curve = RunCurve.from_events(events)
    return {**job, "best": curve.best.tolist(), "clock_s": curve.clock_s.tolist(), "trials": trials}


def run_jobs(jobs: list[dict[str, Any]], folder: Path, processes: int) -> list[dict[str, Any]]:
    """Run the jobs on ``processes`` processes (in this one when 1)."""
    if jobs and jobs[0]["backend"] == "tune":
        import ray

        from bench.lcbench.real_tune import start_ray

        _init_worker(str(folder))
        start_ray(jobs[0]["workers"])
        try:
            return [run_job(job) for job in jobs]
        finally:
            ray.shutdown()
    if processes <= 1:
        _init_worker(str(folder))
        return [run_job(job) for job in jobs]
    with ProcessPoolExecutor(processes, initializer=_init_worker, initargs=(str(folder),)) as pool:
        return list(pool.map(run_job, jobs, chunksize=1))
