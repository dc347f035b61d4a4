"""Safety checks: other projects' databases are never written into, and a bad name or full disk is one line."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import optuna
import pytest

from muratune.config import load_config
from muratune.errors import UserError
from tests.helpers.search import DEMO_CONFIG
from tests.test_bad_data import assert_one_line_error, run


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
