"""`muratune train`: one configuration outside Ray Tune, checkpoints in a folder; an old folder is kept until done."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from muratune.config import HYPERPARAMETERS, ExperimentConfig, parse_override
from muratune.errors import UserError
from muratune.fileio import Input, check_output, refuse_existing, replacing_folder, write_marker
from muratune.layout import CHECKPOINTS_KIND


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
    from muratune.trainables.reporters import FolderReporter
    from muratune.trainables.space import validate_space
    from muratune.trainables.trial import train_trial

    validate_space(config)
    if not config.data.root:
        raise UserError("data.root: no dataset given; set it in the config or pass --data ROOT")
    check_output(out, [Input(config.data.root, "the dataset")])
    load_index(config.data.root)
    with replacing_folder(out, CHECKPOINTS_KIND, echo) as replacement:
        if not resume:
            refuse_existing(out, overwrite, kind=CHECKPOINTS_KIND if out.exists() and any(out.iterdir()) else None)
            replacement.move_old_aside()
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, CHECKPOINTS_KIND)
        return train_trial(hparams, config, FolderReporter(out, resume=resume, echo=echo))
