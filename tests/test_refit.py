"""muratune refit: fold models as real Tune trials, out-of-fold predictions, ensemble/cv, safety and resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray import tune

from muratune.config import validate_config
from muratune.constants import SPLIT, SPLIT_TRAIN, STUDY_PATH
from muratune.data.index import load_index
from muratune.data.split import patient_folds
from muratune.ensemble.predictor import StudyPredictor
from muratune.errors import UserError
from muratune.fileio import Replacement
from muratune.layout import (
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    MARKER,
    OOF_IMAGES,
    REFIT_DIR,
    REFIT_KIND,
    REFIT_SUMMARY,
    SUMMARY_CSV,
    TRIALS_DIR,
)
from muratune.layout import REFIT_PLAN as PLAN_FILE
from muratune.refit.run import RefitOptions, run_refit
from muratune.schemas import read_ensemble_spec
from tests.helpers.ensemble import CV_KEYS
from tests.helpers.files import tree_digest

FOLDS, EPOCHS, TOP = 2, 2, 2


class InterruptAfterFirstFoldModel(tune.Stopper):
    """Interrupts the refit as Ctrl-C would, once one fold model has finished, if ``marker`` exists.

    Tune ends a run on SIGUSR1 as on SIGINT: it saves a restorable state and returns, leaving unfinished trials to
    ``Tuner.restore`` (a stopper's ``stop_all`` would instead end the experiment for good). The signal goes on the
    trial's closing result, which Tune sends only after the last epoch's checkpoint is registered.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.sent = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("done") and self.marker.exists() and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)
        return False

    def stop_all(self) -> bool:
        return False


def _copy_experiment(tiny_experiment: Path, target: Path) -> Path:
    shutil.copytree(tiny_experiment, target, ignore=shutil.ignore_patterns(REFIT_DIR, ENSEMBLE_DIR))
    return target


def _epochs_trained(trial_dir: Path) -> list[int]:
    """Every epoch a trial reported, in order, from Tune's result.json (one line per report, appended on resume)."""
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [int(json.loads(line)["epoch"]) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def refit(ray_session, tiny_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A refit interrupted after its first fold model, then resumed with --resume."""
    exp = _copy_experiment(tiny_experiment, tmp_path_factory.mktemp("refit") / "tiny")
    marker = exp.parent / "interrupt"
    marker.touch()
    first = run_refit(
        exp, RefitOptions(top=TOP, folds=FOLDS, epochs=EPOCHS), stop=InterruptAfterFirstFoldModel(marker), echo=print
    )
    trials = exp / REFIT_DIR / TRIALS_DIR
    before = {p.name: _epochs_trained(p) for p in trials.glob("trial_*") if (p / "result.json").is_file()}
    marker.unlink()
    second = run_refit(exp, RefitOptions(resume=True), echo=print)
    return {"exp": exp, "first": first, "second": second, "before": before}


def test_an_interrupted_refit_resumes_without_training_any_fold_twice(refit: dict) -> None:
    first, second, exp = refit["first"], refit["second"], refit["exp"]
    assert first.unfinished > 0 and first.ensemble is None
    finished_first = first.summary.loc[first.summary["state"] == "COMPLETE", "trial_id"].tolist()
    assert finished_first, "the interrupted refit should have finished a fold model"
    assert second.unfinished == 0 and second.ensemble is not None
    plan = json.loads((exp / REFIT_DIR / PLAN_FILE).read_text())
    expected = {f"trial_{c['trial_id']}_fold{k}" for c in plan["configurations"] for k in range(FOLDS)}
    trials = exp / REFIT_DIR / TRIALS_DIR
    assert sorted(p.name for p in trials.glob("trial_*")) == sorted(expected)  # one trial per (configuration, fold)
    for trial_id in finished_first:  # finished before the interruption: not one more epoch afterwards
        assert _epochs_trained(trials / f"trial_{trial_id}") == refit["before"][f"trial_{trial_id}"]
        assert refit["before"][f"trial_{trial_id}"] == list(range(1, EPOCHS + 1))
    for name in expected:  # the others went on from their checkpoints: none started over, all reached the end
        epochs = _epochs_trained(trials / name)
        assert epochs.count(1) == 1 and epochs == sorted(epochs) and epochs[-1] == EPOCHS, (name, epochs)
    summary = pd.read_csv(exp / REFIT_DIR / REFIT_SUMMARY)
    assert len(summary) == TOP * FOLDS and set(summary["state"]) == {"COMPLETE"}
    assert (summary["epochs"] == EPOCHS).all()
    for checkpoint in summary["checkpoint"]:  # a finished fold model keeps its weights, not its optimizer state
        assert (Path(checkpoint) / "model.safetensors").is_file()
        assert not list(Path(checkpoint).parent.glob("checkpoint_*/optimizer*"))


def test_refit_takes_the_best_configurations_by_kappa_then_auc(refit: dict) -> None:
    summary = pd.read_csv(refit["exp"] / SUMMARY_CSV, dtype={"trial_id": str})
    ranked = summary.sort_values(["best_val_kappa", "best_val_auc"], ascending=False)
    plan = json.loads((refit["exp"] / REFIT_DIR / PLAN_FILE).read_text())
    assert [c["trial_id"] for c in plan["configurations"]] == ranked["trial_id"].head(TOP).tolist()
    assert plan["folds"] == FOLDS and plan["epochs"] == EPOCHS


def test_every_train_study_has_exactly_one_out_of_fold_prediction(refit: dict, synthetic_root: Path) -> None:
    oof = pd.read_parquet(refit["exp"] / REFIT_DIR / OOF_IMAGES)
    folds = patient_folds(load_index(synthetic_root), FOLDS, seed=0)
    train = folds[folds[SPLIT] == SPLIT_TRAIN]
    fold_of = train.drop_duplicates(STUDY_PATH).set_index(STUDY_PATH)["fold"]
    assert oof["configuration"].nunique() == TOP
    for _, frame in oof.groupby("configuration"):
        assert not frame["image_path"].duplicated().any()
        assert sorted(frame["image_path"]) == sorted(train["image_path"])
        per_study = frame.groupby(STUDY_PATH)["fold"].agg(["nunique", "first"])
        assert (per_study["nunique"] == 1).all()
        assert sorted(per_study.index) == sorted(fold_of.index)
        # predicted by the fold model that held the study out
        assert (per_study["first"] == fold_of[per_study.index]).all()
        assert frame["prob"].between(0, 1).all()


def test_cv_ensemble_holds_the_fold_models_and_loads_in_predict_and_serve(refit: dict, synthetic_root: Path) -> None:
    from muratune.serve.service import StudyService, Upload

    cv = refit["exp"] / ENSEMBLE_DIR / "cv"
    spec = json.loads((cv / ENSEMBLE_FILE).read_text())
    assert spec["strategy"] == "cv" and spec["selected_strategy"] in ("greedy", "greedy-per-body-part")
    assert spec["folds"] == FOLDS and len(spec["members"]) == FOLDS * len(spec["configurations"])
    assert {"oof_kappa", "oof_auc"} <= set(spec["oof_score"]) and "test_kappa" in spec["test_score"]
    assert spec["calibration"]["fitted_on"] == "out-of-fold" and {"oof_ece", "oof_brier"} <= set(spec["oof_score"])
    assert {"test_ece", "test_brier"} <= set(spec["test_score"])
    assert list(spec) == CV_KEYS  # the keys muratune writes, in file order
    assert read_ensemble_spec(cv / ENSEMBLE_FILE).to_json() == spec  # written through the one schema
    weights = np.asarray(spec["weights"]["all"])
    assert weights.sum() == pytest.approx(sum(spec["configurations"].values()))
    for j in range(0, len(weights), FOLDS):  # each configuration's weight split equally over its folds
        assert np.allclose(weights[j : j + FOLDS], weights[j])
    assert (cv / "test_studies.parquet").is_file() and (cv / "test_metrics.json").is_file()

    predictor = StudyPredictor.load(cv, device="cpu")
    assert len(predictor.members) == len(spec["members"])
    valid = load_index(synthetic_root)
    valid = valid[valid[SPLIT] == "valid"].head(12)
    studies = predictor.predict_frame(valid[["image_path"]], root=valid.attrs["root"])
    assert studies["prob"].between(0, 1).all() and len(studies) == valid[STUDY_PATH].nunique()

    service = StudyService(cv, device="cpu", cam_shifts=1)
    files = [
        Path(valid.attrs["root"]) / p for p in valid.loc[valid[STUDY_PATH] == valid[STUDY_PATH].iloc[0], "image_path"]
    ]
    verdict = service.analyse([Upload(f.name, f.read_bytes()) for f in files], body_part=valid["body_part"].iloc[0])
    assert 0 <= verdict["prob"] <= 1 and len(service.info()["members"]) == len(spec["members"])


def test_report_shows_cv_with_its_out_of_fold_kappa_beside_test_kappa(refit: dict, tmp_path: Path) -> None:
    from muratune.report.write import write_report

    write_report(refit["exp"], tmp_path / "report", replicates=20, echo=lambda _: None)
    board = pd.read_csv(tmp_path / "report" / "leaderboard.csv")
    row = board[board["name"] == "cv"].iloc[0]
    spec = json.loads((refit["exp"] / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE).read_text())
    assert row["oof_kappa"] == pytest.approx(spec["oof_score"]["oof_kappa"])
    assert row["kappa_overall"] == pytest.approx(spec["test_score"]["test_kappa"], abs=1e-6)
    assert "out-of-fold kappa" in (tmp_path / "report" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ refusals
def test_an_existing_refit_or_cv_ensemble_is_only_replaced_with_overwrite(refit: dict) -> None:
    with pytest.raises(UserError, match="ensemble/cv: already exists; pass --overwrite"):
        run_refit(refit["exp"], RefitOptions(top=TOP, folds=FOLDS, epochs=EPOCHS))
    with pytest.raises(UserError, match="started with --folds 2"):
        run_refit(refit["exp"], RefitOptions(folds=3, resume=True, overwrite=True))


def test_a_running_search_is_refused(tiny_experiment: Path, tmp_path: Path) -> None:
    exp = _copy_experiment(tiny_experiment, tmp_path / "tiny")
    summary = pd.read_csv(exp / SUMMARY_CSV, dtype={"trial_id": str})
    summary.loc[0, "state"] = "RUNNING"
    summary.to_csv(exp / SUMMARY_CSV, index=False)
    with pytest.raises(UserError, match=r"still RUNNING.*muratune search --resume"):
        run_refit(exp, RefitOptions(top=1, folds=2))
    summary.loc[0, "state"] = "COMPLETE"
    summary.head(len(summary) - 1).to_csv(exp / SUMMARY_CSV, index=False)  # stopped before its last trial began
    with pytest.raises(UserError, match=rf"stopped after {len(summary) - 1} of its {len(summary)} trials"):
        run_refit(exp, RefitOptions(top=1, folds=2))
    (exp / SUMMARY_CSV).unlink()
    with pytest.raises(UserError, match="search_summary.csv: not found; the search has not finished"):
        run_refit(exp, RefitOptions(top=1, folds=2))
    assert not (exp / REFIT_DIR).exists()


def test_missing_trial_checkpoints_are_refused(tiny_experiment: Path, tmp_path: Path) -> None:
    exp = _copy_experiment(tiny_experiment, tmp_path / "tiny")
    summary = pd.read_csv(exp / SUMMARY_CSV, dtype={"trial_id": str})
    summary["checkpoint"] = [str(tmp_path / "gone" / Path(p).name) for p in summary["checkpoint"]]
    summary.to_csv(exp / SUMMARY_CSV, index=False)
    shutil.rmtree(exp / TRIALS_DIR)
    with pytest.raises(UserError, match="checkpoint of trial .* not found"):
        run_refit(exp, RefitOptions(top=1, folds=2))
    with pytest.raises(UserError, match="no refit to resume"):
        run_refit(exp, RefitOptions(resume=True))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"folds": 1, "fold": 0}, "greater than or equal to 2"),
        ({"folds": 3, "fold": 3}, "must be below folds"),
        ({"folds": 3}, "set together"),
    ],
)
def test_fold_settings_are_validated(data: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_config({"data": data})


def test_an_overwritten_refit_stays_restorable_until_its_successor_finishes(
    refit: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tmp_path / "tiny"
    shutil.copytree(refit["exp"], exp)
    old_plan = (exp / REFIT_DIR / PLAN_FILE).read_text()
    marker = tmp_path / "interrupt"
    marker.touch()
    interrupted = run_refit(
        exp, RefitOptions(top=TOP, folds=FOLDS, epochs=1, overwrite=True), stop=InterruptAfterFirstFoldModel(marker)
    )  # four fold models, two at a time: the interrupt after the first finished always leaves one unfinished
    assert interrupted.unfinished
    (aside,) = exp.glob(f".{REFIT_DIR}.replaced-*")
    assert (aside / PLAN_FILE).read_text() == old_plan  # the old refit, whole, beside the new one
    assert str(aside) in capsys.readouterr().out
    assert (exp / ENSEMBLE_DIR / "cv").is_dir()  # the old cv ensemble is untouched until a new one is built
    resumed = run_refit(exp, RefitOptions(resume=True, overwrite=True), echo=print)  # the successor finishes
    assert resumed.unfinished == 0 and resumed.ensemble is not None
    assert not aside.exists() and not list(exp.glob(f".{REFIT_DIR}.replaced-*"))
    assert f"removed {aside}" in capsys.readouterr().out


def test_a_tta_cv_ensemble_is_selected_on_tta_out_of_fold_predictions(refit: dict, tmp_path: Path) -> None:
    from muratune.data.split import FOLD
    from muratune.ensemble.inputs import open_caches
    from muratune.ensemble.predictor import member_image_probs
    from muratune.ensemble.trained import load_trained_model
    from muratune.experiment_folder import load_resolved_config
    from muratune.refit.ensemble import CvSettings, build_cv_ensemble, oof_with_tta
    from muratune.refit.oof import assemble_oof
    from muratune.refit.plan import RefitPlan

    exp = refit["exp"]
    config = load_resolved_config(exp)
    plan = RefitPlan.read(exp / REFIT_DIR / PLAN_FILE)
    summary = pd.read_csv(exp / REFIT_DIR / REFIT_SUMMARY, dtype={"trial_id": str, "configuration": str})
    names = [c.trial_id for c in plan.configurations]
    index = load_index(config.data.root)
    plain = assemble_oof(exp / REFIT_DIR, config, names, plan.folds, plan.split_seed, summary)
    flipped = oof_with_tta(plain, summary, plan, index, config, 64, print)
    assert flipped.probs.shape == plain.probs.shape and np.isfinite(flipped.probs).all()
    assert not np.allclose(flipped.probs, plain.probs)

    rows = (plain.images[FOLD] == 1).to_numpy()  # fold 1's images: predicted by fold 1's model, flipped and not
    checkpoint = summary.loc[(summary["configuration"] == names[0]) & (summary[FOLD] == 1), "checkpoint"].iloc[0]
    model = load_trained_model(Path(checkpoint))
    caches = open_caches(index, [model], config)
    for tta, probs in ((True, flipped.probs), (False, plain.probs)):
        expected = member_image_probs([model], plain.images[rows], index.attrs["root"], caches, tta)[:, 0]
        assert np.allclose(probs[rows, 0], expected, atol=1e-4)

    copy = tmp_path / "tiny"
    shutil.copytree(exp, copy)
    spec = build_cv_ensemble(copy, config, plan, summary, CvSettings(tta=True, overwrite=True), echo=print)
    assert spec["tta"] is True and StudyPredictor.load(copy / ENSEMBLE_DIR / "cv", device="cpu").tta
    assert json.loads((copy / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE).read_text())["tta"] is True


def test_folds_without_a_train_study_of_the_experiments_body_parts_are_refused(tmp_path: Path) -> None:
    from muratune.refit.plan import RefitPlan
    from muratune.refit.run import check_folds
    from tests.helpers.mura import make_mura_csvs

    counts = {
        "train": {"XR_WRIST": (20, 20, 40), "XR_HUMERUS": (1, 1, 2)},
        "valid": {"XR_WRIST": (2, 2, 4), "XR_HUMERUS": (1, 1, 2)},
    }
    root = make_mura_csvs(tmp_path, counts).base
    wide = validate_config({"data": {"root": str(root)}})
    check_folds(wide, RefitPlan([], 5, 1, 0))  # all body parts: every fold holds train studies
    humerus = validate_config({"data": {"root": str(root), "body_parts": ["XR_HUMERUS"]}})
    with pytest.raises(UserError, match=r"--folds 5: fold\(s\) .* hold no train study of data.body_parts"):
        check_folds(humerus, RefitPlan([], 5, 1, 0))


def _with_storage(exp: Path, storage: str) -> None:
    """Rewrite the experiment's resolved config with another ``storage``."""
    from muratune.config import dump_config, load_config
    from muratune.layout import RESOLVED_CONFIG

    config = load_config(exp / RESOLVED_CONFIG)
    (exp / RESOLVED_CONFIG).write_text(dump_config(config.model_copy(update={"storage": storage})))


def _foreign_cv(exp: Path) -> None:
    cv = exp / ENSEMBLE_DIR / "cv"
    cv.mkdir(parents=True)
    (cv / "notes.txt").write_text("mine")


@pytest.mark.parametrize(
    ("prepare", "options", "message"),
    [
        (lambda exp: None, {"size": 0}, r"--size 0: must be at least 1"),
        (_foreign_cv, {"overwrite": True}, r"ensemble/cv: exists and is not a muratune ensemble folder"),
        (lambda exp: _with_storage(exp, "s3://bucket/runs"), {}, r"storage: s3://bucket/runs: refit needs"),
    ],
    ids=["size-0", "foreign-cv", "cloud-storage"],
)
def test_bad_refit_options_are_refused_before_anything_is_trained(
    tiny_experiment: Path, tmp_path: Path, prepare, options: dict, message: str
) -> None:
    exp = _copy_experiment(tiny_experiment, tmp_path / "tiny")
    prepare(exp)
    with pytest.raises(UserError, match=message):
        run_refit(exp, RefitOptions(top=1, folds=2, epochs=1, **options))
    assert not (exp / REFIT_DIR).exists()


def test_a_top_beyond_the_searchs_trials_resumes_with_the_same_command(tiny_experiment: Path, tmp_path: Path) -> None:
    from muratune.experiment_folder import load_resolved_config
    from muratune.refit.plan import RefitPlan, make_plan

    exp = _copy_experiment(tiny_experiment, tmp_path / "tiny")
    config = load_resolved_config(exp)
    trials = len(pd.read_csv(exp / SUMMARY_CSV).dropna(subset=["best_val_kappa"]))
    plan = make_plan(exp, config, top=trials + 5, folds=2, epochs=1, resume=False, overwrite=False)
    assert len(plan.configurations) == trials and plan.requested_top == trials + 5
    (exp / REFIT_DIR).mkdir()
    (exp / REFIT_DIR / PLAN_FILE).write_text(json.dumps(plan.to_json()))
    resumed = make_plan(exp, config, top=trials + 5, folds=2, epochs=1, resume=True, overwrite=False)
    assert resumed == plan and RefitPlan.read(exp / REFIT_DIR / PLAN_FILE).requested_top == trials + 5
    with pytest.raises(
        UserError, match=rf"--top {trials}: the refit being resumed was started with --top {trials + 5}"
    ):
        make_plan(exp, config, top=trials, folds=None, epochs=None, resume=True, overwrite=False)


@pytest.mark.parametrize(
    "text", ['["not", "a", "plan"]', '{"configurations": ["x"], "folds": 2, "epochs": 1, "split_seed": 0}', "{"]
)
def test_a_broken_refit_plan_is_one_line(tmp_path: Path, text: str) -> None:
    from muratune.refit.plan import RefitPlan

    (tmp_path / PLAN_FILE).write_text(text)
    with pytest.raises(UserError, match=str(tmp_path / PLAN_FILE)):
        RefitPlan.read(tmp_path / PLAN_FILE)


def test_a_new_refit_folder_appears_with_its_plan_in_one_rename(tmp_path: Path) -> None:
    from muratune.refit.plan import RefitPlan
    from muratune.refit.run import create_refit_dir
    from muratune.refit.select import Configuration

    refit = tmp_path / REFIT_DIR
    configurations = [Configuration("a1", {"backbone": "resnet10t"}, 0.5, 0.9, "")]  # a plan has at least one
    assert create_refit_dir(Replacement(refit, REFIT_KIND), RefitPlan(configurations, 2, 1, 0, 3)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [REFIT_DIR]  # no temporary folder left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert RefitPlan.read(refit / PLAN_FILE).requested_top == 3 and refit.stat().st_mode & 0o777 == 0o777 & ~umask
    (refit / "trials").mkdir()
    aside = create_refit_dir(Replacement(refit, REFIT_KIND), RefitPlan(configurations, 3, 1, 0, 2))
    assert aside is not None and (aside / "trials").is_dir() and RefitPlan.read(aside / PLAN_FILE).folds == 2
    assert sorted(p.name for p in refit.iterdir()) == sorted([MARKER, PLAN_FILE])  # marked as a refit of ours


def test_a_refit_folder_muratune_did_not_make_is_never_replaced(tiny_experiment: Path, tmp_path: Path) -> None:
    exp = _copy_experiment(tiny_experiment, tmp_path / "tiny")
    (exp / REFIT_DIR).mkdir()
    (exp / REFIT_DIR / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"refit: exists and is not a muratune refit folder"):
        run_refit(exp, RefitOptions(top=1, folds=2, epochs=1, overwrite=True))
    assert sorted(p.name for p in (exp / REFIT_DIR).iterdir()) == ["notes.txt"]
    assert not list(exp.glob(f".{REFIT_DIR}.*"))  # nothing moved aside or left half-made


def _fail_one_configuration(exp: Path, trial_id: str) -> None:
    """Make every fold model of one configuration crash at its first epoch, with no retry (debug fault injection)."""
    from muratune.config import dump_config, load_config
    from muratune.config.sections import DebugConfig, FailureConfig
    from muratune.layout import RESOLVED_CONFIG, TRIAL_FILE, trial_dir

    summary = pd.read_csv(exp / SUMMARY_CSV, dtype={"trial_id": str})
    copied = [
        str(trial_dir(exp, t) / Path(c).name) for t, c in zip(summary["trial_id"], summary["checkpoint"], strict=True)
    ]
    summary["checkpoint"] = copied  # this copy's checkpoints, not the shared experiment's
    summary.to_csv(exp / SUMMARY_CSV, index=False)
    trial_file = Path(copied[summary.index[summary["trial_id"] == trial_id][0]]) / TRIAL_FILE
    trial = json.loads(trial_file.read_text())
    trial["hyperparameters"]["backbone"] = "resnet14t"  # the fault below matches this backbone only
    trial_file.write_text(json.dumps(trial))
    config = load_config(exp / RESOLVED_CONFIG)
    faulty = {"debug": DebugConfig(fault="crash", fault_backbone="resnet14t"), "failure": FailureConfig(max_failures=0)}
    (exp / RESOLVED_CONFIG).write_text(dump_config(config.model_copy(update=faulty)))


def test_a_failed_fold_model_stops_the_refit_until_resumed_with_drop_failed(
    tiny_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from muratune.cli import main
    from muratune.refit.select import rank_trials

    exp = _copy_experiment(tiny_experiment, tmp_path / "tiny")
    good, bad = rank_trials(pd.read_csv(exp / SUMMARY_CSV, dtype={"trial_id": str}))["trial_id"].head(2)
    _fail_one_configuration(exp, bad)
    with pytest.raises(SystemExit) as stopped:  # the command line: no ensemble/cv, exit code 1 for scripts
        main(["refit", str(exp), "--top", "2", "--folds", "2", "--epochs", "1"])
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert "trial crashed (injected by debug.fault=crash)" in out
    assert f"--resume --drop-failed` builds ensemble/cv without configuration(s) {bad}" in out
    assert not (exp / ENSEMBLE_DIR / "cv").exists()
    summary = pd.read_csv(exp / REFIT_DIR / REFIT_SUMMARY, dtype={"trial_id": str, "configuration": str})
    assert dict(zip(summary["configuration"], summary["state"], strict=True)) == {good: "COMPLETE", bad: "FAIL"}
    trials = exp / REFIT_DIR / TRIALS_DIR
    before = {p.name: (p / "result.json").read_text() for p in trials.glob("trial_*") if (p / "result.json").exists()}

    resumed = run_refit(exp, RefitOptions(resume=True, drop_failed=True), echo=print)
    assert resumed.ensemble is not None and resumed.unfinished == 0
    left_out = rf"configuration {bad} left out of ensemble/cv \(trial_{bad}_fold0: .*trial crashed"
    assert re.search(left_out, capsys.readouterr().out)
    spec = json.loads((exp / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE).read_text())
    assert list(spec["configurations"]) == [good] and list(spec["dropped_configurations"]) == [bad]
    assert sorted(m["name"] for m in spec["members"]) == [f"trial_{good}_fold0", f"trial_{good}_fold1"]
    after = {p.name: (p / "result.json").read_text() for p in trials.glob("trial_*") if (p / "result.json").exists()}
    assert after == before  # --drop-failed retried no failed fold model and retrained no finished one
    predictor = StudyPredictor.load(exp / ENSEMBLE_DIR / "cv")
    assert len(predictor.members) == 2


def test_a_resumed_plan_naming_a_fold_model_its_run_never_held_is_refused(refit: dict, tmp_path: Path) -> None:
    exp = tmp_path / "tiny"
    shutil.copytree(refit["exp"], exp, ignore=shutil.ignore_patterns(ENSEMBLE_DIR))  # as if cut short before it
    plan_path = exp / REFIT_DIR / PLAN_FILE
    plan = json.loads(plan_path.read_text())
    plan["configurations"][0]["trial_id"] = "deadbeef"  # matches no Tune trial of this refit
    plan_path.write_text(json.dumps(plan))
    before = tree_digest(exp)
    with pytest.raises(
        UserError, match=r"refit\.json: the refit being resumed trained trial_\w+_fold0, which its plan"
    ):
        run_refit(exp, RefitOptions(resume=True), echo=print)
    assert tree_digest(exp) == before
