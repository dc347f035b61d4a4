"""``refit.json`` is checked by its schema before a refit resumes from it: one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muratune.errors import UserError
from muratune.refit.plan import RefitPlan
from muratune.refit.select import Configuration

CONFIGURATION = {
    "trial_id": "a1b2c3d4",
    "hparams": {"backbone": "resnet10t", "lr": 0.001},
    "val_kappa": 0.7,
    "val_auc": None,
    "checkpoint": "/x/trials/trial_a1b2c3d4/checkpoint_000002",
    "peak_epoch": 2,
    "epochs": 2,
}
PLAN = {"top": 1, "folds": 3, "epochs": 2, "epochs_rule": "peak", "split_seed": 0, "configurations": [CONFIGURATION]}


def write(tmp_path: Path, plan: dict) -> Path:
    path = tmp_path / "refit.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    return path


def test_a_plan_round_trips(tmp_path: Path):
    plan = RefitPlan.read(write(tmp_path, PLAN))
    assert plan.to_json() == PLAN
    assert [c.to_json() for c in plan.configurations] == [Configuration.from_json(CONFIGURATION).to_json()]


def test_a_plan_written_before_epochs_were_recorded_per_configuration_still_reads(tmp_path: Path):
    configuration = {k: v for k, v in CONFIGURATION.items() if k not in ("peak_epoch", "epochs")}
    old = {**{k: v for k, v in PLAN.items() if k != "epochs_rule"}, "epochs": 4, "configurations": [configuration]}
    plan = RefitPlan.read(write(tmp_path, old))
    assert plan.epochs_rule == "fixed" and plan.epochs_of("a1b2c3d4") == 4
    assert plan.entries()[0]["epochs"] == 4 and plan.configurations[0].peak_epoch is None


def test_a_plan_written_before_top_was_recorded_still_reads(tmp_path: Path):
    old = {key: value for key, value in PLAN.items() if key != "top"}
    assert RefitPlan.read(write(tmp_path, old)).requested_top == 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"epochs": -5}, "epochs: Input should be greater than or equal to 1"),
        ({"folds": 1}, "folds: Input should be greater than or equal to 2"),
        ({"epochs": "4"}, "epochs: Input should be a valid integer"),
        ({"configurations": []}, "configurations: List should have at least 1 item"),
        ({"configurations": [CONFIGURATION, CONFIGURATION]}, "trial a1b2c3d4 is listed more than once"),
        ({"configurations": [{**CONFIGURATION, "trial_id": ""}]}, "configurations.0.trial_id"),
        ({"configurations": [{**CONFIGURATION, "hparams": {}}]}, "configurations.0.hparams"),
        ({"split_seed": None}, "split_seed"),
        ({"extra": 1}, "extra: unknown key"),
        ({"epochs_rule": "best"}, "epochs_rule: Input should be 'fixed' or 'peak'"),
        ({"configurations": [{**CONFIGURATION, "epochs": 0}]}, "configurations.0.epochs"),
    ],
)
def test_a_tampered_plan_is_refused_in_one_line(tmp_path: Path, change: dict, fragment: str):
    path = write(tmp_path, {**PLAN, **change})
    with pytest.raises(UserError) as refused:
        RefitPlan.read(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message
