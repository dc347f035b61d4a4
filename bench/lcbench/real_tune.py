"""The scale benchmark in real Ray Tune: the same searcher and scheduler objects, a trainable that sleeps each epoch.

Each trial reads its curve from the surrogate and sleeps the surrogate's epoch time times ``TIME_SCALE``, so trials
finish out of order as in the simulation. Under BOHB, trials checkpoint their epoch (a small JSON) so that a
trial it pauses resumes where it stopped. The search ends once ``budget`` epochs have been reported; epochs still
in flight then are left out, so the curve has exactly ``budget`` epochs, each counted once.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.lcbench.methods import build_method
from bench.lcbench.simulate import Event
from bench.lcbench.surrogate import MAX_EPOCHS, REPOSITORY, Surrogate, param_space
from muratune.constants import EPOCH, METRIC, MODE, VAL_LOSS

TIME_SCALE = 0.01  # real seconds per surrogate second: a median epoch (about 18 s) sleeps about 0.2 s
_SURROGATES: dict[str, Surrogate] = {}


def lcbench_trainable(hparams: dict[str, Any], task: int, folder: str, time_scale: float, checkpoints: bool) -> None:
    """A Tune function trainable: one ``tune.report`` per surrogate epoch, resumable from its checkpoint.

    Only searches that pause trials (`pauses_trials`) need ``checkpoints``; the others skip their cost.
    """
    from ray import tune

    surrogate = _SURROGATES.setdefault(folder, Surrogate(folder))
    curve = surrogate.curve(task, hparams)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder_in:
            start = int(json.loads((Path(folder_in) / "state.json").read_text())[EPOCH])
    for index in range(start, MAX_EPOCHS):
        time.sleep(float(curve.epoch_s[index]) * time_scale)
        metrics = {METRIC: float(curve.accuracy[index]), VAL_LOSS: float(curve.cross_entropy[index]), EPOCH: index + 1}
        if not checkpoints:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder_out:
            (Path(folder_out) / "state.json").write_text(json.dumps({EPOCH: index + 1}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder_out))


class _EpochRecorder:
    """Tune callback and stopper: records each (trial, epoch) once, on the clock, and stops at the budget."""

    def __init__(self, budget: int, time_scale: float) -> None:
        self.budget, self.time_scale = budget, time_scale
        self.events: list[Event] = []
        self.seen: set[tuple[str, int]] = set()
        self.start = time.monotonic()

    def record(self, trial_id: str, result: dict[str, Any]) -> None:
        key = (trial_id, int(result.get("training_iteration", 0)))
        if key in self.seen or METRIC not in result or len(self.events) >= self.budget:
            return
        self.seen.add(key)
        clock = (time.monotonic() - self.start) / self.time_scale
        self.events.append(Event(trial_id, int(result[EPOCH]), clock, float(result[METRIC])))


def _stopper(recorder: _EpochRecorder) -> Any:
    from ray.tune import Stopper

    class EpochBudget(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            recorder.record(trial_id, result)
            return False

        def stop_all(self) -> bool:
            return len(recorder.events) >= recorder.budget

    return EpochBudget()


def pauses_trials(scheduler: Any) -> bool:
    """Whether the scheduler pauses trials, which then resume from a checkpoint (BOHB's and promotion-type ASHA)."""
    from ray.tune.schedulers import HyperBandForBOHB

    from muratune.search.promotion import PromotionASHA

    return isinstance(scheduler, (HyperBandForBOHB, PromotionASHA))


def run_tune(
    folder: str | Path, task: int, method: str, seed: int, workers: int, budget: int, time_scale: float = TIME_SCALE
) -> list[Event]:
    """One search in real Ray Tune (`start_ray` first); returns its epochs in the order they were reported."""
    from ray import tune

    searcher, scheduler = build_method(method, seed, workers, set_space=False, budget=budget)
    recorder = _EpochRecorder(budget, time_scale)
    trainable = tune.with_parameters(
        lcbench_trainable, task=task, folder=str(folder), time_scale=time_scale, checkpoints=pauses_trials(scheduler)
    )
    with tempfile.TemporaryDirectory(prefix="muratune-scale-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=param_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=100_000
            ),
            run_config=tune.RunConfig(
                storage_path=storage,
                name=f"{method}-{task}-s{seed}",
                stop=_stopper(recorder),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
        recorder.start = time.monotonic()
        tuner.fit()
    return recorder.events


def start_ray(workers: int, attempts: int = 10) -> None:
    """Start a private local Ray with ``workers`` CPUs; on a loaded machine its startup can time out, so retry."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials import this module by name on Ray's workers: let them find bench/ (the repository root).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY), os.environ.get("PYTHONPATH")) if p)
    for attempt in range(attempts):
        try:
            ray.init(
                num_cpus=workers,
                object_store_memory=200 * 1024**2,  # trials pass nothing through the object store
                include_dashboard=False,
                log_to_driver=False,
                _temp_dir=tempfile.mkdtemp(prefix="ray-scale-"),  # a private session folder on a shared machine
            )
            return
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception when its node times out during startup
            ray.shutdown()
            if attempt == attempts - 1:
                raise
