"""Checkpoints are read only from inside the experiment being worked on, never through a path into another one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from muratune.errors import UserError
from muratune.layout import ENSEMBLE_DIR, REFIT_DIR, SUMMARY_CSV, TRIALS_DIR, checkpoint_in_experiment


def make_checkpoint(exp: Path, *parts: str) -> Path:
    folder = exp.joinpath(*parts)
    folder.mkdir(parents=True)
    return folder


def test_a_recorded_path_inside_the_experiment_is_used_as_it_is(tmp_path: Path):
    exp = tmp_path / "exp"
    checkpoint = make_checkpoint(exp, TRIALS_DIR, "trial_a", "checkpoint_000002")
    assert checkpoint_in_experiment(exp, str(checkpoint)) == checkpoint.resolve()


def test_a_moved_experiments_paths_are_re_rooted_at_its_trials(tmp_path: Path):
    old = tmp_path / "trials" / "old"  # a "trials" part above the experiment must not mislead it
    new = tmp_path / "new"
    make_checkpoint(new, TRIALS_DIR, "trial_a", "checkpoint_000002")
    make_checkpoint(new, "trials_train", "ddp_a", "checkpoint_000001")
    recorded = old / TRIALS_DIR / "trial_a" / "checkpoint_000002"
    assert checkpoint_in_experiment(new, str(recorded)) == (new / TRIALS_DIR / "trial_a" / "checkpoint_000002")
    ddp = "s3://bucket/old/trials_train/ddp_a/checkpoint_000001"
    assert checkpoint_in_experiment(new, ddp) == new / "trials_train" / "ddp_a" / "checkpoint_000001"


def test_another_experiments_checkpoint_is_never_reached(tmp_path: Path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    source = make_checkpoint(original, TRIALS_DIR, "trial_a", "checkpoint_000002")
    copy.mkdir()
    located = checkpoint_in_experiment(copy, str(source))
    assert located == copy / TRIALS_DIR / "trial_a" / "checkpoint_000002" and not located.exists()
    assert checkpoint_in_experiment(copy, str(tmp_path / "elsewhere" / "checkpoint_000002")) is None
    (copy / TRIALS_DIR).symlink_to(original / TRIALS_DIR)  # a link out of the experiment does not count either
    assert checkpoint_in_experiment(copy, str(source)) is None


@pytest.mark.slow
def test_a_copy_without_its_trials_is_refused_by_refit_and_ensemble(tiny_experiment: Path, tmp_path: Path):
    from muratune.ensemble.inputs import read_candidates
    from muratune.refit.select import select_configurations

    copy = tmp_path / "copy"
    shutil.copytree(tiny_experiment, copy, ignore=shutil.ignore_patterns(REFIT_DIR, ENSEMBLE_DIR, TRIALS_DIR))
    recorded = pd.read_csv(copy / SUMMARY_CSV)["checkpoint"].dropna()
    assert all(Path(p).is_dir() for p in recorded)  # the original's checkpoints are still there, by absolute path
    with pytest.raises(UserError, match=rf"not found in {copy}"):
        select_configurations(copy, top=1)
    with pytest.raises(UserError, match=rf"not found in {copy}"):
        read_candidates(copy)


@pytest.mark.slow
def test_a_moved_copy_reads_its_own_checkpoints(tiny_experiment: Path, tmp_path: Path):
    from muratune.ensemble.inputs import read_candidates
    from muratune.refit.select import select_configurations

    copy = tmp_path / "copy"
    shutil.copytree(tiny_experiment, copy, ignore=shutil.ignore_patterns(REFIT_DIR, ENSEMBLE_DIR))
    assert Path(select_configurations(copy, top=1)[0].checkpoint).is_relative_to(copy)
    assert all(c.checkpoint.is_relative_to(copy.resolve()) for c in read_candidates(copy))
