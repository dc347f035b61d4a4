"""Failing real trials through the `search` command: a NaN loss fails that trial, with its reason, and the rest run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from muratune import layout
from tests.helpers.cli import run
from tests.helpers.mura import make_mura
from tests.helpers.search import DEMO_CONFIG, tiny_overrides


@pytest.mark.slow
def test_a_nan_loss_fails_its_trial_with_the_reason_and_the_search_goes_on(ray_session, tmp_path: Path, capsys):
    root = make_mura(tmp_path / "data").base
    storage = tmp_path / "runs"
    sets = tiny_overrides(
        root,
        storage,
        name="nan",
        **{
            "data.image_size": 32,
            "data.cache_dir": tmp_path / "cache",
            "budget.num_samples": 4,
            "budget.max_epochs": 1,
            "budget.grace_period": 1,
            "resources.max_concurrent_trials": 1,
            "space.batch_size": 8,
            "space.backbone": "{type: choice, values: [resnet10t, resnet14t]}",
            "optuna.sampler": "random",
            "optuna.seed": 4,  # samples both backbones (two trials each)
            "failure.max_failures": 0,
            "debug.fault": "nan",
            "debug.fault_backbone": "resnet14t",  # only these trials' loss becomes NaN
        },
    )
    args = ["search", str(DEMO_CONFIG)]
    for item in sets:
        args += ["--set", item]
    code, out, err = run(args, capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    summary = pd.read_csv(storage / "nan" / layout.SUMMARY_CSV)
    assert len(summary) == 4
    failed = summary[summary.backbone == "resnet14t"]
    assert not failed.empty and (summary.backbone == "resnet10t").any(), "the seed should sample both backbones"
    assert set(failed.state) == {"FAIL"}
    assert failed.error.str.contains("loss became nan").all()
    assert set(summary[summary.backbone == "resnet10t"].state) == {"COMPLETE"}
    assert "FAIL" in out  # the printed summary shows the failed trials too
