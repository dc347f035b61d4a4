"""muratune refit --epochs peak, --full (ensemble/cv-full) and the default predictor chosen on out-of-fold evidence."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from muratune.constants import SPLIT, SPLIT_TRAIN, STUDY_PATH
from muratune.data.index import load_index
from muratune.ensemble.load import default_predictor, load_ensemble
from muratune.ensemble.predictor import StudyPredictor
from muratune.layout import (
    DEFAULT_PREDICTOR,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    FULL_DIR,
    REFIT_DIR,
    REFIT_PLAN,
    SUMMARY_CSV,
    TRIAL_FILE,
    TRIALS_DIR,
    trial_dir,
)
from muratune.refit.run import RefitOptions, run_refit
from muratune.schemas import read_default_choice, read_ensemble_spec
from tests.helpers.ensemble import CV_KEYS

FOLDS, TOP = 2, 2
PEAKS = (3, 3)  # the best checkpoints' epochs this test gives the two best search trials
BUDGET = 4  # and the budget it gives the experiment: --epochs peak trains fewer epochs than the default would


class InterruptAtSecondEpoch(tune.Stopper):
    """Interrupts the run as Ctrl-C would (SIGUSR1: Tune saves a restorable state) at the second epoch a trial
    reports, while ``marker`` exists: every model here trains 3 epochs, so that one is left unfinished, and its first
    epoch's checkpoint is registered (the second's may not be yet: that epoch may be trained again)."""

    def __init__(self, marker: Path) -> None:
        self.marker, self.sent = marker, False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("epoch") == 2 and self.marker.exists() and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)
        return False

    def stop_all(self) -> bool:
        return False


def _epochs_trained(trial: Path) -> list[int]:
    lines = (trial / "result.json").read_text().splitlines()
    return [int(json.loads(line)["epoch"]) for line in lines if line.strip()]


def _results(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]


def _set_peaks(exp: Path) -> list[str]:
    """Give the two best search trials' best checkpoints the epochs `PEAKS` (this copy's checkpoints), and the
    experiment the budget `BUDGET` (and 2 steps an epoch)."""
    from muratune.config import dump_config, load_config
    from muratune.layout import RESOLVED_CONFIG
    from muratune.ranking import rank_trials

    config = load_config(exp / RESOLVED_CONFIG)
    budget = config.budget.model_copy(update={"max_epochs": BUDGET})
    train = config.train.model_copy(update={"max_steps_per_epoch": 2})  # epochs are what is counted here, not steps
    (exp / RESOLVED_CONFIG).write_text(dump_config(config.model_copy(update={"budget": budget, "train": train})))

    summary = pd.read_csv(exp / SUMMARY_CSV, dtype={"trial_id": str})
    summary["checkpoint"] = [
        str(trial_dir(exp, t) / Path(c).name) for t, c in zip(summary["trial_id"], summary["checkpoint"], strict=True)
    ]
    summary.to_csv(exp / SUMMARY_CSV, index=False)
    best = rank_trials(summary).head(TOP)
    for checkpoint, peak in zip(best["checkpoint"], PEAKS, strict=True):
        record = json.loads((Path(checkpoint) / TRIAL_FILE).read_text())
        record["epoch"] = peak
        (Path(checkpoint) / TRIAL_FILE).write_text(json.dumps(record))
    return best["trial_id"].tolist()


@pytest.fixture(scope="module")
def full_refit(ray_session, tiny_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``refit --epochs peak``, then ``--full`` interrupted at its second epoch, then ``--full`` again."""
    exp = tmp_path_factory.mktemp("full") / "tiny"
    shutil.copytree(tiny_experiment, exp, ignore=shutil.ignore_patterns(REFIT_DIR, ENSEMBLE_DIR))
    best = _set_peaks(exp)
    cv = run_refit(exp, RefitOptions(top=TOP, folds=FOLDS, epochs="peak"), echo=print)
    folds = exp / REFIT_DIR / TRIALS_DIR
    fold_results = {p.name: (p / "result.json").read_text() for p in folds.glob("trial_*")}
    marker = exp.parent / "interrupt"
    marker.touch()
    interrupted = run_refit(exp, RefitOptions(full=True), stop=InterruptAtSecondEpoch(marker), echo=print)
    marker.unlink()
    full = run_refit(exp, RefitOptions(full=True), echo=print)
    return {"exp": exp, "best": best, "cv": cv, "interrupted": interrupted, "full": full, "folds": fold_results}


def test_peak_epochs_come_from_each_search_trials_best_checkpoint(tiny_experiment: Path) -> None:
    from muratune.experiment_folder import load_resolved_config
    from muratune.refit.plan import make_plan

    config = load_resolved_config(tiny_experiment)
    plan = make_plan(tiny_experiment, config, top=3, folds=2, epochs="peak", resume=False, overwrite=False)
    summary = pd.read_csv(tiny_experiment / SUMMARY_CSV, dtype={"trial_id": str}).set_index("trial_id")
    for c in plan.configurations:
        recorded = json.loads((Path(c.checkpoint) / TRIAL_FILE).read_text())["epoch"]
        assert c.peak_epoch == recorded == c.epochs == plan.epochs_of(c.trial_id) >= 1
        assert recorded == summary.loc[c.trial_id, "best_epoch"]  # the epoch the search ranked best
    assert plan.epochs == max(c.epochs for c in plan.configurations) and plan.epochs_rule == "peak"


def test_fold_models_train_for_their_configurations_peak_epoch(full_refit: dict) -> None:
    exp = full_refit["exp"]
    plan = json.loads((exp / REFIT_DIR / REFIT_PLAN).read_text())
    assert plan["epochs_rule"] == "peak" and plan["epochs"] == max(PEAKS) < BUDGET
    epochs = {c["trial_id"]: (c["peak_epoch"], c["epochs"]) for c in plan["configurations"]}
    assert epochs == {name: (peak, peak) for name, peak in zip(full_refit["best"], PEAKS, strict=True)}
    for name, peak in zip(full_refit["best"], PEAKS, strict=True):
        for k in range(FOLDS):
            assert _epochs_trained(exp / REFIT_DIR / TRIALS_DIR / f"trial_{name}_fold{k}") == list(range(1, peak + 1))
    with pytest.raises(Exception, match=r"--epochs 3: the refit being resumed was started with --epochs peak"):
        run_refit(exp, RefitOptions(epochs=3, resume=True, overwrite=True))


def test_full_models_train_once_on_the_whole_train_split_and_resume_without_repeating(
    full_refit: dict, synthetic_root: Path
) -> None:
    exp, cv = full_refit["exp"], full_refit["cv"].ensemble
    assert full_refit["interrupted"].unfinished > 0 and full_refit["interrupted"].full is None
    assert full_refit["full"].unfinished == 0 and full_refit["full"].full is not None
    folds = exp / REFIT_DIR / TRIALS_DIR
    assert {p.name: (p / "result.json").read_text() for p in folds.glob("trial_*")} == full_refit["folds"]
    index = load_index(synthetic_root)
    train_studies = index.loc[index[SPLIT] == SPLIT_TRAIN, STUDY_PATH].nunique()
    peaks = dict(zip(full_refit["best"], PEAKS, strict=True))
    trials = sorted(p.name for p in (exp / REFIT_DIR / FULL_DIR).glob("trial_*"))
    assert trials == sorted(f"trial_{name}_full" for name in cv["configurations"])  # one per cv configuration
    for name in cv["configurations"]:
        trial = exp / REFIT_DIR / FULL_DIR / f"trial_{name}_full"
        epochs = _epochs_trained(trial)  # resumed from its checkpoint: not started over, and ended at its epochs
        assert epochs.count(1) == 1 and epochs == sorted(epochs) and epochs[-1] == peaks[name], (name, epochs)
        assert {r["train_studies"] for r in _results(trial)} == {train_studies}  # every train study, each epoch
        fold0 = _results(folds / f"trial_{name}_fold0")[0]
        assert fold0["train_studies"] < train_studies  # a fold model saw part of them
        (checkpoint,) = trial.glob("checkpoint_*")
        data = json.loads((checkpoint / TRIAL_FILE).read_text())["experiment_config"]["data"]
        assert data["whole_train"] is True and data["folds"] is None


def test_cv_full_has_cvs_choice_with_one_member_per_configuration_and_predicts(
    full_refit: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    from muratune.ensemble.predict import predict_csv

    exp = full_refit["exp"]
    cv = read_ensemble_spec(exp / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE)
    full = read_ensemble_spec(exp / ENSEMBLE_DIR / "cv-full" / ENSEMBLE_FILE)
    assert full.strategy == "cv-full" and full.selected_strategy == cv.selected_strategy
    assert full.thresholds == cv.thresholds and full.calibration == cv.calibration and full.tta == cv.tta
    assert full.configurations == cv.configurations
    assert [m.name for m in full.members] == [f"trial_{name}_full" for name in cv.configurations]
    for part, vector in full.weights.items():  # each configuration's weight: its fold models' together
        folds = [sum(cv.weights[part][j * FOLDS : (j + 1) * FOLDS]) for j in range(len(cv.configurations))]
        assert vector == pytest.approx(folds)
    assert "test_kappa" in full.test_score and (exp / ENSEMBLE_DIR / "cv-full" / "test_studies.parquet").is_file()

    valid = load_index(synthetic_root)
    valid = valid[valid[SPLIT] == "valid"].head(8)
    images = tmp_path / "images.csv"
    images.write_text("".join(f"{p}\n" for p in valid["image_path"]))
    predict_csv(exp / ENSEMBLE_DIR / "cv-full", images, tmp_path / "out.csv", root=valid.attrs["root"])
    assert len((tmp_path / "out.csv").read_text().splitlines()) == valid[STUDY_PATH].nunique()
    assert len(StudyPredictor.load(exp / ENSEMBLE_DIR / "cv-full").members) == len(cv.configurations)


def test_the_default_predictor_is_recorded_with_its_out_of_fold_evidence(full_refit: dict, tmp_path: Path) -> None:
    from muratune.refit.default import auto_choice
    from muratune.report.write import write_report

    exp = full_refit["exp"]
    choice = read_default_choice(exp / ENSEMBLE_DIR / DEFAULT_PREDICTOR)
    evidence = choice.evidence
    assert choice.configuration == full_refit["best"][0]  # compared with the best configuration alone
    assert evidence["kappa_diff"] == pytest.approx(evidence["oof_kappa_cv"] - evidence["oof_kappa_single"])
    assert evidence["kappa_diff_ci"][0] <= evidence["kappa_diff_ci"][1]
    expected, _ = auto_choice(evidence, choice.configuration, full_built=True)
    assert choice.predictor == expected and full_refit["full"].default["predictor"] == expected
    for name in ("cv", "cv-full"):
        spec = json.loads((exp / ENSEMBLE_DIR / name / ENSEMBLE_FILE).read_text())
        assert spec["default"] == choice.model_dump(mode="json")
    assert list(json.loads((exp / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE).read_text())) == CV_KEYS
    assert default_predictor(exp) == (exp / choice.path).resolve()
    assert len(load_ensemble(exp, device="cpu").members) >= 1

    write_report(exp, tmp_path / "report", replicates=20, echo=lambda _: None)
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"Default predictor: {choice.predictor}" in text and choice.reason in text


def test_a_forced_default_is_recorded_and_loaded_from_the_experiment_folder(full_refit: dict, tmp_path: Path) -> None:
    from muratune.refit.default import record_default
    from muratune.refit.plan import RefitPlan

    exp = tmp_path / "tiny"
    shutil.copytree(full_refit["exp"], exp)
    plan = RefitPlan.read(exp / REFIT_DIR / REFIT_PLAN)
    choice = record_default(exp, plan, "cv-full", echo=print)
    assert choice.predictor == "cv-full" and choice.rule == "--default cv-full"
    from muratune.serve.service import StudyService

    names = [m.name for m in load_ensemble(exp, device="cpu").members]
    service = StudyService(exp, device="cpu", cam_shifts=1)  # serve, given the experiment folder
    assert service.ensemble_dir == exp / "ensemble" / "cv-full" and len(service.info()["members"]) == len(names)
    assert names == [
        f"trial_{name}_full" for name in read_ensemble_spec(exp / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE).configurations
    ]


def test_full_on_a_finished_refit_with_cv_full_is_refused_without_overwrite(full_refit: dict) -> None:
    from muratune.errors import UserError

    with pytest.raises(UserError, match=r"ensemble/cv-full: already exists; pass --overwrite"):
        run_refit(full_refit["exp"], RefitOptions(full=True))
    with pytest.raises(UserError, match=r"--default cv-full: needs --full"):
        run_refit(full_refit["exp"], RefitOptions(default="cv-full", resume=True))
    with pytest.raises(UserError, match=r"--default greedy: no ensemble/greedy in this experiment"):
        run_refit(full_refit["exp"], RefitOptions(default="greedy", resume=True))
    with pytest.raises(UserError, match=r"--default best: expected one of auto, cv, cv-full, best-single, greedy"):
        run_refit(full_refit["exp"], RefitOptions(default="best", resume=True))


def test_the_command_line_refits_in_full_unless_told_not_to(
    full_refit: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """`muratune refit EXP` goes on to cv-full by default (refused here: it exists); `--no-full` stops at cv."""
    from muratune.cli import main

    exp = full_refit["exp"]
    for flags, existing in (([], "cv-full"), (["--no-full"], "cv")):
        with pytest.raises(SystemExit) as refused:
            main(["refit", str(exp), *flags])
        assert refused.value.code == 2
        err = capsys.readouterr().err.strip()
        assert (
            err == f"muratune: error: {exp / ENSEMBLE_DIR / existing}: already exists; pass --overwrite to replace it"
        )


def _evidence(kappa: tuple[float, float, float], log_loss: tuple[float, float, float]) -> dict:
    return {
        "kappa_diff": kappa[0],
        "kappa_diff_ci": list(kappa[1:]),
        "log_loss_diff": log_loss[0],
        "log_loss_diff_ci": list(log_loss[1:]),
    }


@pytest.mark.parametrize(
    ("kappa", "log_loss", "full_built", "expected"),
    [
        # the hard benchmark's seed 0: kappa level, log loss clearly better -> cv-full where built, else cv
        ((-0.001, -0.054, 0.052), (-0.009, -0.015, -0.003), True, "cv-full"),
        ((-0.001, -0.054, 0.052), (-0.009, -0.015, -0.003), False, "cv"),
        # its seed 1: nothing clear either way -> cv-full (more data, not worse), else the best single trial
        ((0.009, -0.035, 0.053), (-0.002, -0.011, 0.007), True, "cv-full"),
        ((0.009, -0.035, 0.053), (-0.002, -0.011, 0.007), False, "best-single"),
        # cv selected the best configuration only: identical out-of-fold predictions -> cv-full, not worse
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), True, "cv-full"),
        # a clear kappa gain -> cv; a clearly worse kappa or log loss -> the best single trial, cv-full or not
        ((0.06, 0.01, 0.11), (0.001, -0.004, 0.006), False, "cv"),
        ((-0.08, -0.14, -0.02), (-0.01, -0.02, -0.001), True, "best-single"),
        ((0.01, -0.03, 0.05), (0.02, 0.01, 0.03), True, "best-single"),
    ],
)
def test_the_default_rule(
    kappa: tuple[float, float, float], log_loss: tuple[float, float, float], full_built: bool, expected: str
) -> None:
    from muratune.refit.default import auto_choice

    predictor, reason = auto_choice(_evidence(kappa, log_loss), "abc123", full_built)
    assert predictor == expected and "abc123" in reason
