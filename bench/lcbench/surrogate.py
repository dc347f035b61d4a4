"""YAHPO Gym's LCBench surrogate read with onnxruntime: learning curves of MLPs on OpenML tasks, 50 trained epochs.

YAHPO Gym feeds the ONNX graph raw hyperparameter values (its input and output transforms are inside the graph):
``x_cat`` is the task's index in ``encoding.json``, ``x_cont`` the epoch and the seven hyperparameters in
`CONT_NAMES` order, as float32. Outputs are `OUTPUTS`: ``time`` is the cumulative training time in seconds up to
that epoch, ``val_accuracy`` is in percent.

Epoch semantics (YAHPO Gym's FAQ, "lcbench and epochs"): the surrogate's epoch 1 is the untrained model and its
epoch 52 repeats epoch 51, so the benchmark uses surrogate epochs 2 to 51 (`FIDELITY_EPOCHS`). A trial's epoch e
(1 to `MAX_EPOCHS` = 50) reads surrogate epoch e + 1: a rung at epoch 1 means one trained epoch, a full trial is 50.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from muratune.errors import UserError
from muratune.fileio import write_json

FIDELITY_EPOCHS = (2, 51)  # the surrogate epochs read: its epoch 1 is untrained, its epoch 52 repeats 51
MAX_EPOCHS = FIDELITY_EPOCHS[1] - FIDELITY_EPOCHS[0] + 1  # a full trial's epochs: 50
CONT_NAMES = (
    "epoch",
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "num_layers",
    "max_units",
    "max_dropout",
)
OUTPUTS = (
    "time",
    "val_accuracy",
    "val_cross_entropy",
    "val_balanced_accuracy",
    "test_cross_entropy",
    "test_balanced_accuracy",
)
# LCBench's space (config_space.json) in muratune's YAML space syntax.
SPACE_YAML = """
batch_size: {type: int, low: 16, high: 512, log: true}
learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-1}
momentum: {type: uniform, low: 0.1, high: 0.99}
weight_decay: {type: uniform, low: 1.0e-5, high: 0.1}
num_layers: {type: int, low: 1, high: 5}
max_units: {type: int, low: 64, high: 1024, log: true}
max_dropout: {type: uniform, low: 0.0, high: 1.0}
"""
DEV_TASKS = (3945, 7593, 34539, 126025, 126026, 126029, 146212, 167104, 167149, 167152)
BEST_KNOWN_SAMPLES = 10_000
BEST_KNOWN_JSON = f"best_known-epochs{FIDELITY_EPOCHS[0]}-{FIDELITY_EPOCHS[1]}.json"  # keyed by the fidelity range
REPOSITORY = Path(__file__).resolve().parents[2]  # bench/lcbench/surrogate.py -> the repository root
MIN_EPOCH_S = 0.01  # the surrogate's cumulative time is not always monotone; an epoch never takes less than this


def surrogate_epoch(epoch: int | np.ndarray) -> int | np.ndarray:
    """The surrogate epoch a trial's epoch reads (trial epoch 1, one trained epoch, is surrogate epoch 2)."""
    return epoch + FIDELITY_EPOCHS[0] - 1


def default_surrogate_dir() -> Path | None:
    """``../shared/data/yahpo-lcbench`` next to the repository (or the working directory), if it exists."""
    for base in (REPOSITORY, Path.cwd()):
        candidate = base.parent / "shared" / "data" / "yahpo-lcbench"
        if (candidate / "model.onnx").is_file():
            return candidate
    return None


def space_entries() -> dict[str, Any]:
    """LCBench's space as validated muratune `SpaceEntry` objects, by hyperparameter name."""
    import yaml

    from muratune.config import SpaceEntry

    return {name: SpaceEntry.model_validate(raw) for name, raw in yaml.safe_load(SPACE_YAML).items()}


def param_space() -> dict[str, Any]:
    """LCBench's space as Ray Tune domains, through muratune's converter."""
    from muratune.search.space import create_domain

    return {name: create_domain(entry) for name, entry in space_entries().items()}


@dataclass(frozen=True)
class Curve:
    """One configuration's curve: validation accuracy (a fraction), cross-entropy and seconds, per epoch."""

    accuracy: np.ndarray
    cross_entropy: np.ndarray
    epoch_s: np.ndarray


class Surrogate:
    """The LCBench ONNX surrogate for a set of OpenML tasks.

    Args:
        folder: the folder holding ``model.onnx``, ``encoding.json`` and ``config_space.json``.
    """

    def __init__(self, folder: str | Path) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        model = self.folder / "model.onnx"
        if not model.is_file():
            raise UserError(f"--surrogate {self.folder}: no model.onnx here (see docs/search-efficiency.md)")
        self.encoding: dict[str, int] = json.loads((self.folder / "encoding.json").read_text())["OpenML_task_id"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def tasks(self) -> list[int]:
        """The OpenML task ids the surrogate knows."""
        return sorted(int(t) for t in self.encoding if t.isdigit())

    def task_index(self, task: int) -> int:
        """The task's integer code for ``x_cat``."""
        code = self.encoding.get(str(task))
        if code is None:
            raise UserError(f"--tasks: {task} is not an LCBench task; known: {', '.join(map(str, self.tasks()))}")
        return code

    def query(self, task: int, rows: np.ndarray) -> np.ndarray:
        """Raw outputs (`OUTPUTS` columns) for rows of `CONT_NAMES` values."""
        x_cont = np.asarray(rows, dtype=np.float32).reshape(-1, len(CONT_NAMES))
        x_cat = np.full((len(x_cont), 1), self.task_index(task), dtype=np.int32)
        return self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]

    def curve(self, task: int, hparams: dict[str, Any]) -> Curve:
        """The configuration's whole curve over a trial's `MAX_EPOCHS` epochs (surrogate epochs 2-51, one query).

        The first epoch's seconds are the surrogate's cumulative time at epoch 2 (it never reads epoch 1).
        """
        values = [float(hparams[name]) for name in CONT_NAMES[1:]]
        epochs = surrogate_epoch(np.arange(1, MAX_EPOCHS + 1))
        rows = np.column_stack([epochs, np.tile(values, (MAX_EPOCHS, 1))])
        out = self.query(task, rows)
        elapsed = np.maximum.accumulate(np.maximum(out[:, 0], 0.0))
        epoch_s = np.maximum(np.diff(elapsed, prepend=0.0), MIN_EPOCH_S)
        return Curve(accuracy=out[:, 1] / 100.0, cross_entropy=out[:, 2], epoch_s=epoch_s)

    def random_final_accuracy(self, task: int, samples: int, seed: int = 0) -> np.ndarray:
        """Final validation accuracy (a fraction; surrogate epoch 51) of ``samples`` configurations drawn uniformly."""
        rng = np.random.default_rng(seed)
        columns = [np.full(samples, float(FIDELITY_EPOCHS[1]))]
        for name in CONT_NAMES[1:]:
            columns.append(_draw(space_entries()[name], rng, samples))
        return self.query(task, np.column_stack(columns))[:, 1] / 100.0


def _draw(entry: Any, rng: np.random.Generator, size: int) -> np.ndarray:
    """Uniform draws from one space entry (log-uniform where the entry says so)."""
    low, high = float(entry.low), float(entry.high)
    log = entry.type == "loguniform" or entry.log
    if entry.type == "int":
        if log:
            return np.clip(np.floor(np.exp(rng.uniform(np.log(low), np.log(high + 1), size))), low, high)
        return rng.integers(int(low), int(high) + 1, size).astype(float)
    return np.exp(rng.uniform(np.log(low), np.log(high), size)) if log else rng.uniform(low, high, size)


def best_known(surrogate: Surrogate, tasks: list[int], cache: Path) -> dict[int, float]:
    """Each task's best validation accuracy over 10,000 random configurations at surrogate epoch 51, cached.

    ``cache`` records the fidelity range it was computed at (``{"fidelity_epochs": [2, 51], "best": {task: acc}}``)
    and is keyed by task; tasks missing from it are computed and added. A cache computed at another fidelity (or an
    old one without the range, taken at epoch 52) is refused rather than reused.
    """
    known = _read_best_known(cache)
    missing = [t for t in tasks if str(t) not in known]
    for task in missing:
        known[str(task)] = float(surrogate.random_final_accuracy(task, BEST_KNOWN_SAMPLES, seed=0).max())
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"fidelity_epochs": list(FIDELITY_EPOCHS), "best": dict(sorted(known.items()))})
    return {t: float(known[str(t)]) for t in tasks}


def _read_best_known(cache: Path) -> dict[str, float]:
    """The cached best accuracies by task, if ``cache`` exists and was computed at `FIDELITY_EPOCHS`."""
    if not cache.is_file():
        return {}
    saved = json.loads(cache.read_text())
    if saved.get("fidelity_epochs") != list(FIDELITY_EPOCHS):
        raise UserError(
            f"--cache {cache}: computed at another fidelity than surrogate epochs {FIDELITY_EPOCHS[0]}-"
            f"{FIDELITY_EPOCHS[1]}; give another --cache path"
        )
    return dict(saved["best"])
