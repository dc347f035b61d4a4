"""Outputs never destroy what muratune did not make: every refusal is one line, exit 2, inputs byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muratune.config import load_config
from muratune.errors import UserError
from muratune.fileio import atomic_dir, replacing_folder
from muratune.layout import CHECKPOINTS_KIND, EXPERIMENT_KIND, MARKER, experiment_dir
from muratune.search import experiment
from tests.helpers.cli import assert_one_line_error, run
from tests.helpers.ensemble import make_ensemble
from tests.helpers.files import tree_digest
from tests.helpers.mura import make_mura
from tests.helpers.search import DEMO_CONFIG, tiny_overrides


def refused(args: list[str], capsys: pytest.CaptureFixture[str], untouched: list[Path], *fragments: str) -> None:
    """The command exits 2 with one error line naming ``fragments``, and every ``untouched`` path is unchanged."""
    before = [tree_digest(path) for path in untouched]
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert_one_line_error(err, list(fragments))
    assert [tree_digest(path) for path in untouched] == before


@pytest.fixture()
def experiment_copy(tiny_experiment: Path, tmp_path: Path) -> Path:
    """A private copy of the session's finished tiny experiment."""
    return Path(shutil.copytree(tiny_experiment, tmp_path / "exp"))


@pytest.mark.slow
def test_report_never_replaces_the_experiment_or_foreign_folders(experiment_copy, tmp_path, capsys, monkeypatch):
    exp = experiment_copy
    refused(["report", str(exp), "--out", str(exp), "--overwrite"], capsys, [exp], "--out", "the experiment")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("months of work")
    refused(["report", str(exp), "--out", str(other), "--overwrite"], capsys, [exp, other], str(other), "marker")
    monkeypatch.setenv("HOME", str(tmp_path))
    refused(["report", str(exp), "--out", str(tmp_path), "--overwrite"], capsys, [exp, other], "home folder")


def test_cam_never_writes_over_or_inside_its_inputs(tmp_path, capsys):
    fixture = make_mura(tmp_path / "data")
    ensemble = make_ensemble(tmp_path / "ensemble")
    study = fixture.base / fixture.studies[0][0]
    dataset = fixture.dataset_dir
    for out, what in ((dataset, "the study"), (ensemble, "the ensemble"), (study / "cams", "the study")):
        args = ["cam", str(ensemble), "--study", str(study), "--out", str(out), "--overwrite"]
        refused(args, capsys, [dataset, ensemble], "--out", what)


def test_predict_never_replaces_its_image_list_or_writes_into_a_folder(tmp_path, capsys):
    fixture = make_mura(tmp_path / "data")
    ensemble = make_ensemble(tmp_path / "ensemble")
    image_list = fixture.csv("valid_image_paths.csv")
    args = ["predict", str(ensemble), str(image_list), str(image_list), "--overwrite"]
    refused(args, capsys, [fixture.dataset_dir, ensemble], "OUTPUT_CSV", "the image list")
    folder = tmp_path / "predictions"
    folder.mkdir()
    refused(["predict", str(ensemble), str(image_list), str(folder)], capsys, [fixture.dataset_dir], "is a folder")


def test_replacing_an_output_leaves_unrelated_siblings_alone(tmp_path):
    target = tmp_path / "report"
    sibling = tmp_path / ".report.old"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("not muratune's")
    for _ in range(2):
        with atomic_dir(target, overwrite=True, kind="report") as tmp:
            (tmp / "index.html").write_text("<p>report</p>")
    assert (sibling / "keep.txt").read_text() == "not muratune's"
    assert (target / MARKER).is_file() and (target / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.old", "report"]


def test_a_foreign_folder_is_never_replaced(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "data.csv").write_text("1,2\n")
    with pytest.raises(UserError, match="not a muratune report folder"):
        with atomic_dir(target, overwrite=True, kind="report"):
            pass
    assert (target / "data.csv").read_text() == "1,2\n"


def test_train_checks_the_data_before_touching_its_output(tmp_path, capsys):
    out = tmp_path / "checkpoints"
    out.mkdir()
    (out / MARKER).write_text('{"kind": "checkpoints"}')
    (out / "checkpoint_000001").mkdir()
    (out / "checkpoint_000001" / "trial.json").write_text("{}")
    missing = tmp_path / "no-such-data"
    args = ["train", str(DEMO_CONFIG), "--data", str(missing), "--out", str(out), "--overwrite"]
    refused(args, capsys, [out], str(missing))


def test_synth_into_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    refused(["data", "synth", str(target), "--studies", "4"], capsys, [target], "OUT", "is a file")


def interrupted_overwrite(config) -> tuple[Path, Path | None, list[str]]:
    """Start replacing the experiment of ``config`` (``--overwrite``), then interrupt the run as Ctrl-C does.

    Returns:
        The experiment folder, where the replaced one was moved, and the lines the replacement printed.
    """
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with replacing_folder(experiment_dir(config), EXPERIMENT_KIND, echo=lines.append) as replacement:
            exp = experiment.prepare_experiment(config, resume=False, overwrite=True, replacement=replacement)
            raise KeyboardInterrupt
    return exp, replacement.aside, lines


def test_search_overwrite_keeps_the_old_experiment_until_the_new_one_finishes(tmp_path, synthetic_root):
    config = load_config(DEMO_CONFIG, tiny_overrides(synthetic_root, tmp_path / "runs", name="kept"))
    exp = experiment.prepare_experiment(config, resume=False, overwrite=False)
    (exp / "search_summary.csv").write_text("trial_id,state\nold,COMPLETE\n")
    before = tree_digest(exp)
    exp, replaced, lines = interrupted_overwrite(config)  # an interrupted search
    assert replaced is not None and tree_digest(replaced) == before
    assert replaced.is_dir() and str(replaced) in lines[0] and "mv" in lines[0]
    with replacing_folder(exp, EXPERIMENT_KIND) as replacement:
        replacement.finished = False  # a resumed search interrupted again keeps it
    assert replaced.is_dir()
    with replacing_folder(exp, EXPERIMENT_KIND):  # a resumed search that finished
        pass
    assert not replaced.exists() and (exp / MARKER).is_file()


def test_a_finished_resume_removes_what_interrupted_overwrites_kept(tmp_path, synthetic_root):
    config = load_config(DEMO_CONFIG, tiny_overrides(synthetic_root, tmp_path / "runs", name="twice"))
    experiment.prepare_experiment(config, resume=False, overwrite=False)
    _, first, _ = interrupted_overwrite(config)
    exp, second, _ = interrupted_overwrite(config)  # interrupted again
    bystander = tmp_path / "runs" / ".twice-notes"  # a hidden folder muratune did not make
    bystander.mkdir()
    look_alike = tmp_path / "runs" / ".twice.replaced-mine"  # named like an aside, but not an experiment of ours
    look_alike.mkdir()
    (look_alike / "notes.txt").write_text("mine")
    assert first is not None and second is not None and first.is_dir() and second.is_dir()
    (exp / "trials").mkdir()
    lines: list[str] = []
    with replacing_folder(exp, EXPERIMENT_KIND, echo=lines.append) as replacement:  # the resumed search finishes
        assert experiment.prepare_experiment(config, resume=True, overwrite=False, replacement=replacement) == exp
    assert replacement.aside is None
    assert not first.exists() and not second.exists()
    assert bystander.is_dir() and (exp / MARKER).is_file()
    assert (look_alike / "notes.txt").read_text() == "mine"
    assert sorted(lines) == sorted(
        f"removed {p}: the experiment it kept was replaced by this one, now finished" for p in (first, second)
    )


def test_a_finished_replacement_deletes_the_folder_it_moved_aside(tmp_path):
    out = tmp_path / "checkpoints"
    out.mkdir()  # empty and unmarked: `muratune train --overwrite` may replace it
    lines: list[str] = []
    with replacing_folder(out, CHECKPOINTS_KIND, echo=lines.append) as replacement:
        aside = replacement.move_old_aside()
        out.mkdir()
    assert aside is not None and not aside.exists() and out.is_dir() and lines == []
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]


def test_search_overwrite_refuses_a_folder_it_did_not_make(tmp_path, synthetic_root):
    config = load_config(DEMO_CONFIG, tiny_overrides(synthetic_root, tmp_path / "runs", name="foreign"))
    foreign = tmp_path / "runs" / "foreign"
    (foreign / "trials").mkdir(parents=True)
    (foreign / "trials" / "precious.txt").write_text("someone else's")
    with pytest.raises(UserError, match="not a muratune experiment folder"):
        experiment.prepare_experiment(config, resume=False, overwrite=True)
    assert (foreign / "trials" / "precious.txt").read_text() == "someone else's"


def test_cam_beside_a_hand_made_image_list_is_not_inside_an_input(tmp_path, capsys):
    fixture = make_mura(tmp_path / "data")
    ensemble = make_ensemble(tmp_path / "ensemble")
    lists = tmp_path / "lists"
    lists.mkdir()
    image_list = lists / "list.csv"
    shutil.copy(fixture.csv("valid_image_paths.csv"), image_list)
    out = lists / "cams"  # beside the list: no input is there
    code, _, err = run(
        ["cam", str(ensemble), "--csv", str(image_list), "--root", str(fixture.base), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert (out / "cams.json").is_file()
    guarded = [fixture.dataset_dir, ensemble, image_list]
    for out, what in (
        (fixture.dataset_dir / "cams", "the dataset"),
        (image_list, "the image list"),
        (fixture.base, "is or holds the dataset"),
        (ensemble / "cams", "the ensemble"),
    ):
        args = ["cam", str(ensemble), "--csv", str(image_list), "--root", str(fixture.base), "--out", str(out)]
        refused(args, capsys, guarded, "--out", what)
    args = ["cam", str(ensemble), "--csv", str(fixture.csv("valid_image_paths.csv")), "--out", str(lists / "more")]
    assert run(args, capsys)[0] == 0  # the list in its dataset, no --root: the dataset is still its folder
    args = [
        "cam",
        str(ensemble),
        "--csv",
        str(fixture.csv("valid_image_paths.csv")),
        "--out",
        str(fixture.dataset_dir / "c"),
    ]
    refused(args, capsys, guarded, "--out", "lies inside the dataset")


def test_symlink_loops_are_one_line_errors(tmp_path, capsys):
    fixture = make_mura(tmp_path / "data")
    ensemble = make_ensemble(tmp_path / "ensemble")
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    out = tmp_path / "cams"
    refused(["cam", str(ensemble), "--study", str(loop), "--out", str(out)], capsys, [ensemble], str(loop))
    study = fixture.base / fixture.studies[0][0]
    refused(
        ["cam", str(ensemble), "--study", str(study), "--out", str(loop)],
        capsys,
        [ensemble],
        "--out",
        "symbolic link loop",
    )
    (study / "image9.png").symlink_to("image9.png")  # an unreadable view among readable ones is skipped with a warning
    code, _, err = run(
        ["cam", str(ensemble), "--study", str(study), "--root", str(fixture.base), "--out", str(out)], capsys
    )
    assert code == 0 and "Traceback" not in err and "image9.png" in err, err
    assert not out.is_symlink() and (out / "cams.json").is_file()
