"""Safety checks: other projects' databases are never written into, and a bad name or full disk is one line."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import optuna
import pytest

from muratune.config import load_config
from muratune.errors import DiskFullError, UserError
from muratune.fileio import atomic_path
from tests.helpers.mura import make_mura
from tests.helpers.search import DEMO_CONFIG
from tests.test_bad_data import assert_one_line_error, make_ensemble, run


def _database_with(path: Path, *tables: str) -> Path:
    """A real SQLite file holding ``tables`` (one column each), as another project's database would."""
    with closing(sqlite3.connect(path)) as connection:
        for table in tables:
            connection.execute(f"CREATE TABLE {table} (value TEXT)")
        connection.commit()
    return path


def _optuna_database(path: Path) -> Path:
    optuna.create_study(study_name="earlier", storage=f"sqlite:///{path}")
    return path


@pytest.mark.parametrize("option", ["optuna.storage", "tracking.mlflow"])
def test_a_database_of_another_schema_is_refused_before_anything_is_written(tmp_path, capsys, option):
    foreign = _database_with(tmp_path / "notes.db", "notes", "alembic_version")
    before = foreign.read_bytes()
    with pytest.raises(UserError) as err:
        load_config(DEMO_CONFIG, [f"{option}=sqlite:///{foreign}"])
    assert "\n" not in str(err.value) and option in str(err.value) and str(foreign) in str(err.value)
    assert "another schema" in str(err.value) and "notes" in str(err.value)
    args = [
        "search",
        str(DEMO_CONFIG),
        "--set",
        f"storage={tmp_path / 'runs'}",
        "--set",
        f"{option}=sqlite:///{foreign}",
    ]
    code, _, err_text = run(args, capsys)
    assert code == 2
    assert_one_line_error(err_text, [option, str(foreign), "another schema"])
    assert foreign.read_bytes() == before and not (tmp_path / "runs").exists()


def test_optuna_and_mlflow_never_share_a_database(tmp_path):
    study_db = _optuna_database(tmp_path / "optuna.db")
    with pytest.raises(UserError, match=r"tracking\.mlflow: .*optuna\.db: holds another schema's tables.*not MLflow's"):
        load_config(DEMO_CONFIG, [f"tracking.mlflow=sqlite:///{study_db}"])
    mlflow_db = _database_with(tmp_path / "mlflow.db", "experiments", "runs", "metrics", "params", "tags")
    with pytest.raises(UserError, match=r"optuna\.storage: .*mlflow\.db: holds another schema's tables.*not Optuna's"):
        load_config(DEMO_CONFIG, [f"optuna.storage=sqlite:///{mlflow_db}"])


def test_empty_new_and_matching_databases_stay_usable(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    study_db = _optuna_database(tmp_path / "study.db")
    mlflow_db = _database_with(tmp_path / "mlflow.db", "experiments", "runs", "metrics", "params", "tags")
    for option, database in [
        ("optuna.storage", empty),
        ("optuna.storage", tmp_path / "new.db"),
        ("optuna.storage", study_db),
        ("tracking.mlflow", empty),
        ("tracking.mlflow", mlflow_db),
    ]:
        config = load_config(DEMO_CONFIG, [f"{option}=sqlite:///{database}"])
        assert f"sqlite:///{database}" in (config.optuna.storage, config.tracking.mlflow)
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{study_db}")] == ["earlier"]


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    junk = tmp_path / "results.db"
    junk.write_text("trial,score\n1,0.5\n" * 100)
    with pytest.raises(UserError, match=r"optuna\.storage: .*results\.db: not an SQLite database"):
        load_config(DEMO_CONFIG, [f"optuna.storage=sqlite:///{junk}"])
    assert junk.read_text() == "trial,score\n1,0.5\n" * 100


# ------------------------------------------------------------------------------------------------ a full disk
@pytest.fixture()
def full_disk(tmp_path: Path):
    """A real, tiny tmpfs filled to the last byte by ``filler`` (mounting needs root: skipped without it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open(disk / "filler", "wb", buffering=0) as filler:
            with pytest.raises(OSError) as err:  # noqa: PT012 - filling takes a loop
                while True:
                    filler.write(b"\0" * 4096)
        assert err.value.errno == errno.ENOSPC
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _refused_for_a_full_disk(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(args, capsys)
    assert code == 2, err
    assert_one_line_error(err, [str(out), "the disk is full"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["filler"]  # nothing partial, no temporary left


def test_report_on_a_full_disk_is_one_line_and_leaves_nothing(full_disk, tmp_path, capsys):
    from tests.test_report import make_experiment

    experiment = make_experiment(tmp_path / "exp")
    out = full_disk / "report"
    _refused_for_a_full_disk(["report", str(experiment), "--out", str(out), "--replicates", "10"], out, capsys)


def test_cam_and_predict_on_a_full_disk_are_one_line_and_leave_nothing(full_disk, tmp_path, capsys):
    fixture = make_mura(tmp_path / "data")
    ensemble = make_ensemble(tmp_path / "ensemble")
    study = fixture.base / fixture.studies[0][0]
    out = full_disk / "cams"
    _refused_for_a_full_disk(["cam", str(ensemble), "--study", str(study), "--out", str(out)], out, capsys)
    out = full_disk / "predictions.csv"
    image_list = str(fixture.csv("valid_image_paths.csv"))
    _refused_for_a_full_disk(["predict", str(ensemble), image_list, str(out)], out, capsys)


def test_a_real_enospc_in_an_atomic_write_names_the_output_and_keeps_nothing(tmp_path):
    target = tmp_path / "predictions.csv"
    with pytest.raises(DiskFullError) as err:
        with atomic_path(target) as tmp, open("/dev/full", "w") as device:  # /dev/full: every write is ENOSPC
            tmp.write_text("partial")
            device.write("x" * 10_000)
            device.flush()
    assert (
        str(err.value)
        == f"{target}: the disk is full (No space left on device); nothing was written there, free some space"
    )
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ a broken summary
BROKEN_SUMMARIES = {
    "not UTF-8": (b"trial_id,state,best_val_kappa\n\xff\xfeab,COMPLETE,0.5\n", "not UTF-8 text"),
    "ragged rows": (b"trial_id,state\naaa,COMPLETE\nbbb,COMPLETE,0.5,extra,fields\n", "not a readable search summary"),
    "empty": (b"", "not a readable search summary"),
    "no state column": (b"trial_id,best_val_kappa\naaa,0.5\n", "no 'state' column"),
}


@pytest.mark.parametrize(("content", "fragment"), BROKEN_SUMMARIES.values(), ids=BROKEN_SUMMARIES.keys())
def test_refit_and_report_on_a_broken_search_summary_are_one_line(tmp_path, capsys, content, fragment):
    from muratune.config import dump_config
    from muratune.layout import RESOLVED_CONFIG, SUMMARY_CSV

    config = load_config(DEMO_CONFIG, [f"storage={tmp_path}", "name=broken"])
    experiment = tmp_path / "broken"
    experiment.mkdir()
    (experiment / RESOLVED_CONFIG).write_text(dump_config(config))
    (experiment / SUMMARY_CSV).write_bytes(content)
    for args in (["refit", str(experiment)], ["report", str(experiment), "--replicates", "10"]):
        code, _, err = run(args, capsys)
        assert code == 2, err
        assert_one_line_error(err, [str(experiment / SUMMARY_CSV), fragment])
