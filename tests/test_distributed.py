"""Data-parallel trials: workers_per_trial=2 runs a TorchTrainer (gloo on the CPU) inside the Tune function."""

from __future__ import annotations

from pathlib import Path

import pytest

from muratune.config import load_config
from muratune.errors import UserError
from muratune.search import resources
from muratune.search import run as search_run
from tests.helpers.search import tiny_overrides

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture()
def released_placement_groups(ray_session):
    """Release what a finished TorchTrainer trial left reserved on the shared Ray (a Ray 2.60 leak the doctor warns
    about), so later tests in the session can still place their trials."""
    from muratune.doctor.searches import _placement_groups, release_leaked_groups

    before = set(_placement_groups())
    yield
    release_leaked_groups(before, wait_s=5.0)


def _ddp_config(tmp_path, root, **extra):
    values = {
        "resources.workers_per_trial": 2,
        "resources.cpus_per_trial": 0.5,
        "resources.max_concurrent_trials": 1,
        "budget.num_samples": 1,
        "budget.max_epochs": 1,
        "train.max_steps_per_epoch": 3,
        **extra,
    }
    return load_config(DEMO, tiny_overrides(root, tmp_path / "runs", name="ddp", **values))


@pytest.mark.slow
def test_data_parallel_trial_reports_to_tune_with_a_checkpoint(
    ray_session, released_placement_groups, tmp_path, synthetic_root
):
    result = search_run.run_search(_ddp_config(tmp_path, synthetic_root), echo=lambda _: None)
    row = result.summary.iloc[0]
    assert row.state == "COMPLETE" and row.epochs == 1
    assert (Path(row.checkpoint) / "model.safetensors").is_file()


def test_data_parallel_trials_that_cannot_all_fit_are_refused(ray_session, tmp_path, synthetic_root):
    config = _ddp_config(tmp_path, synthetic_root, **{"resources.max_concurrent_trials": 2})
    with pytest.raises(UserError, match="max_concurrent_trials"):
        resources.check_cluster_resources(config)
