"""`muratune train`: one configuration outside Ray Tune, checkpoints in a folder; an old folder is kept until done."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from muratune.config import HYPERPARAMETERS, ExperimentConfig, parse_override
from muratune.errors import UserError
from muratune.fileio import Input, check_output, move_aside, refuse_existing, write_marker

KIND = "checkpoints"


def hyperparameters(config: ExperimentConfig, overrides: list[str]) -> dict:
    """The space's representative point with ``--hp name=value`` overrides applied."""
    hparams = config.space.defaults()
    for text in overrides:
        key, value = parse_override(text)
        if key[0] not in HYPERPARAMETERS or len(key) != 1:
            raise UserError(f"--hp {text!r}: unknown hyperparameter; choose from {', '.join(HYPERPARAMETERS)}")
        hparams[key[0]] = value
    return hparams


def train_standalone(
    config: ExperimentConfig,
    hparams: dict,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train one configuration, writing ``out/checkpoint_NNNNNN`` each epoch; return the last epoch's metrics.

    Everything is checked before ``out`` is touched (space, data index, the output path). With ``overwrite`` an
    existing ``out`` that muratune made is moved aside and deleted only when the new training has finished; an
    interrupted training leaves it restorable, and says where.
    """
    from muratune.data.index import load_index
    from muratune.search.space import validate_space
    from muratune.trainables.reporters import FolderReporter
    from muratune.trainables.trial import train_trial

    validate_space(config)
    if not config.data.root:
        raise UserError("data.root: no dataset given; set it in the config or pass --data ROOT")
    check_output(out, [Input(config.data.root, "the dataset")])
    load_index(config.data.root)
    aside = None
    if not resume:
        refuse_existing(out, overwrite, kind=KIND if out.exists() and any(out.iterdir()) else None)
        aside = move_aside(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, KIND)
    try:
        metrics = train_trial(hparams, config, FolderReporter(out, resume=resume, echo=echo))
    except BaseException:
        if aside is not None:
            echo(f"the previous {out} is kept at {aside}; `mv {aside} {out}` restores it")
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return metrics
