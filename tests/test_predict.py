"""`muratune predict`: the official MURA submission format, unreadable images, and user errors through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from muratune.cli import main
from muratune.ensemble.predict import predict_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def greedy(tiny_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A greedy ensemble of the tiny experiment (built in a copy)."""
    from muratune.ensemble.build import build_ensembles

    exp = tmp_path_factory.mktemp("predict") / "tiny"
    shutil.copytree(tiny_experiment, exp)
    build_ensembles(exp, size=3, strategies=["greedy"], echo=lambda _: None)
    return exp / "ensemble" / "greedy"


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0)


def test_output_joins_one_to_one_with_the_labeled_studies(greedy, synthetic_root, tmp_path, capsys):
    dataset = synthetic_root / "MURA-v1.1"
    out = tmp_path / "out.csv"
    assert _run(["predict", str(greedy), str(dataset / "valid_image_paths.csv"), str(out), "--probabilities"]) == 0
    predicted = pd.read_csv(out, header=None, names=["study_path", "label", "prob"])
    truth = pd.read_csv(dataset / "valid_labeled_studies.csv", header=None, names=["study_path", "truth"])
    assert predicted["study_path"].is_unique and len(predicted) == len(truth)
    merged = truth.merge(predicted, on="study_path", how="outer", validate="one_to_one", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert predicted["study_path"].str.endswith("/").all()
    assert set(predicted["label"]) <= {0, 1} and predicted["prob"].between(0, 1).all()
    assert "wrote" in capsys.readouterr().err
    assert _run(["predict", str(greedy), str(dataset / "valid_image_paths.csv"), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_unreadable_images_are_reported_and_skipped(greedy, synthetic_root, tmp_path):
    dataset = synthetic_root / "MURA-v1.1"
    lines = (dataset / "valid_image_paths.csv").read_text().split()
    data = tmp_path / "data"
    for line in lines:
        (data / line).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(synthetic_root / line, data / line)
    studies = pd.Series(lines).str.rsplit("/", n=1).str[0] + "/"
    multi = studies.value_counts()
    partial = multi[multi > 1].index[0]  # one view broken, the others fine
    broken = multi.index[-1] if multi.index[-1] != partial else multi.index[-2]  # every view broken
    bad = [lines[i] for i in range(len(lines)) if studies[i] == broken]
    bad.append(next(lines[i] for i in range(len(lines)) if studies[i] == partial))
    for line in bad:
        (data / line).write_bytes(b"not an image")
    csv = tmp_path / "images.csv"
    csv.write_text("\n".join(lines) + "\n")
    warnings: list[str] = []
    summary = predict_csv(
        greedy, csv, tmp_path / "out.csv", root=data, warn=warnings.append, progress=False, skip_bad_images=True
    )
    predicted = pd.read_csv(tmp_path / "out.csv", header=None, names=["study_path", "label"])
    assert partial in set(predicted["study_path"]) and broken not in set(predicted["study_path"])
    assert len(predicted) == studies.nunique() - 1
    assert all(any(line in w for w in warnings) for line in bad)
    assert any(broken in w and "left out" in w for w in warnings)
    assert "1 studies left out" in summary


def test_corrupted_weights_exit_2_without_traceback(greedy, synthetic_root, tmp_path, capsys):
    folder = tmp_path / "ensemble"
    shutil.copytree(greedy, folder)
    weights = next(folder.glob("members/*/model.safetensors"))
    weights.write_bytes(b"\0" * 64)
    csv = synthetic_root / "MURA-v1.1" / "valid_image_paths.csv"
    assert _run(["predict", str(folder), str(csv), str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muratune: error:") and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out.csv").exists()


def test_missing_input_list_is_a_user_error(greedy, tmp_path, capsys):
    assert _run(["predict", str(greedy), str(tmp_path / "nope.csv"), str(tmp_path / "out.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
