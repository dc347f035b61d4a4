"""`muratune dashboard`: optuna-dashboard serves the experiment's study over HTTP, on loopback, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing, contextmanager
from pathlib import Path

import optuna
import pytest
import requests
import yaml

from muratune.config import dump_config, load_config
from muratune.dashboard import (
    TOKEN_COOKIE,
    TOKEN_ENV,
    DashboardAccess,
    create_dashboard_server,
    dashboard_url,
    study_storage,
)
from muratune.errors import UserError
from muratune.layout import OPTUNA_DB, RESOLVED_CONFIG
from tests.helpers.search import DEMO_CONFIG as DEMO
from tests.test_bad_data import assert_one_line_error, run

URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/dashboard")


def _study_detail(base: str, name: str) -> dict:
    studies = requests.get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
    (study,) = [s for s in studies if s["study_name"] == name]
    return requests.get(f"{base}/api/studies/{study['study_id']}", timeout=30).json()


@pytest.mark.slow
def test_dashboard_command_serves_the_experiments_study(tiny_experiment):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "muratune.cli", "dashboard", str(tiny_experiment), "--port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = URL_RE.search(line)
        assert match, line
        base = f"http://127.0.0.1:{match.group(1)}"
        detail = _study_detail(base, "tiny")
        study = optuna.load_study(study_name="tiny", storage=study_storage(tiny_experiment)[0])
        assert detail["name"] == "tiny" and len(detail["trials"]) == len(study.trials) == 3
        assert {t["state"] for t in detail["trials"]} <= {"Complete", "Pruned"}
        assert requests.get(f"{base}/dashboard", timeout=30).status_code == 200
        forged = requests.get(f"{base}/api/studies", headers={"Host": "attacker.example"}, timeout=30)
        assert forged.status_code == 403  # a rebound DNS name cannot read the study through the browser
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0


def _experiment_with_a_study(tmp_path: Path) -> Path:
    """An experiment folder as a search leaves it, with a real Optuna study of two trials (no search run)."""
    config = load_config(DEMO, [f"storage={tmp_path}", "name=mini"])
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / RESOLVED_CONFIG).write_text(dump_config(config))
    study = optuna.create_study(study_name="mini", storage=f"sqlite:///{folder / OPTUNA_DB}", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=2)
    return folder


def test_dashboard_server_answers_until_shut_down(tmp_path):
    server = create_dashboard_server(_experiment_with_a_study(tmp_path), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        detail = _study_detail(f"http://127.0.0.1:{server.server_port}", "mini")
        assert len(detail["trials"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_dashboard_refuses_folders_without_a_study_and_busy_ports(tmp_path):
    with pytest.raises(UserError, match="not a muratune experiment"):
        create_dashboard_server(tmp_path)
    folder = _experiment_with_a_study(tmp_path)
    (folder / OPTUNA_DB).rename(folder / "moved.db")
    with pytest.raises(UserError, match="no Optuna study here"):
        create_dashboard_server(folder)
    (folder / "moved.db").rename(folder / OPTUNA_DB)
    server = create_dashboard_server(folder, port=0)
    try:
        with pytest.raises(UserError, match=f"--port {server.server_port}: cannot listen there"):
            create_dashboard_server(folder, port=server.server_port)
    finally:
        server.server_close()


def test_configured_storage_is_used(tmp_path):
    folder = _experiment_with_a_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    config = load_config(folder / RESOLVED_CONFIG, [f"optuna.storage={url}"])
    (folder / RESOLVED_CONFIG).write_text(dump_config(config))
    assert study_storage(folder) == (url, "mini")


@contextmanager
def _serving(folder: Path, host: str = "127.0.0.1", token: str | None = None):
    """A dashboard server answering on a thread; yields its base URL on 127.0.0.1 and its access rules."""
    access = DashboardAccess.for_host(host, token)
    server = create_dashboard_server(folder, host=host, port=0, access=access)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", access
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _study_names(folder: Path) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage=study_storage(folder)[0])]


def test_a_foreign_origin_cannot_rename_the_study_on_loopback(tmp_path):
    folder = _experiment_with_a_study(tmp_path)
    with _serving(folder) as (base, _):
        study_id = _study_id(requests.get, base, "mini")
        rename = f"{base}/api/studies/{study_id}/rename"
        forged = requests.post(
            rename, json={"study_name": "pwned"}, headers={"Origin": "http://evil.example"}, timeout=30
        )
        assert forged.status_code == 403 and "cross-origin" in forged.text
        note = f"{base}/api/studies/{study_id}/note"
        sent = {"version": 0, "body": "pwned"}
        forged = requests.put(note, json=sent, headers={"Origin": "http://evil.example"}, timeout=30)
        assert forged.status_code == 403
        assert requests.get(f"{base}/api/studies", headers={"Origin": "http://evil.example"}, timeout=30).ok
        own = requests.post(rename, json={"study_name": "renamed"}, headers={"Origin": base}, timeout=30)
        assert own.status_code == 201, own.text
    assert _study_names(folder) == ["renamed"]


def test_beyond_loopback_every_request_needs_the_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    folder = _experiment_with_a_study(tmp_path)
    with _serving(folder, host="0.0.0.0") as (base, access):
        assert access.token and len(access.token) >= 24
        assert requests.get(f"{base}/api/studies", timeout=30).status_code == 401
        wrong = requests.get(f"{base}/api/studies", headers={"X-Dashboard-Token": "guess"}, timeout=30)
        assert wrong.status_code == 401
        assert requests.get(f"{base}/api/studies", headers={"X-Dashboard-Token": access.token}, timeout=30).ok
        bearer = {"Authorization": f"Bearer {access.token}"}
        assert requests.get(f"{base}/api/studies", headers=bearer, timeout=30).ok
        forged = requests.get(f"{base}/api/studies", headers={**bearer, "Host": "attacker.example"}, timeout=30)
        assert forged.status_code == 403
        with requests.Session() as browser:  # the printed link: ?token= sets a cookie the page's requests carry
            page = browser.get(f"{base}/dashboard", params={"token": access.token}, timeout=30)
            assert page.status_code == 200 and TOKEN_COOKIE in page.headers["Set-Cookie"]
            assert "HttpOnly" in page.headers["Set-Cookie"] and "SameSite=Strict" in page.headers["Set-Cookie"]
            assert browser.get(f"{base}/api/studies", timeout=30).ok
            study_id = _study_id(browser.get, base, "mini")
            forged = browser.delete(f"{base}/api/studies/{study_id}", headers={"Origin": "http://evil.example"})
            assert forged.status_code == 403
    assert _study_names(folder) == ["mini"]


def test_the_token_can_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    access = DashboardAccess.for_host("127.0.0.1")
    assert access.token == "from-the-environment"
    assert "token=" not in dashboard_url(access, 8080)  # a token the user set is never printed
    with _serving(_experiment_with_a_study(tmp_path)) as (base, _):
        assert requests.get(f"{base}/api/studies", timeout=30).status_code == 401
        assert requests.get(f"{base}/api/studies", headers={"X-Dashboard-Token": access.token}, timeout=30).ok
    monkeypatch.delenv(TOKEN_ENV)
    generated = DashboardAccess.for_host("0.0.0.0")
    assert DashboardAccess.for_host("127.0.0.1").token is None
    assert f"token={generated.token}" in dashboard_url(generated, 8080)


def _study_id(get: Callable, base: str, name: str) -> int:
    """The dashboard's id of study ``name``, asked with ``get`` (requests.get or a session's, carrying its cookie)."""
    studies = get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
    (study,) = [s for s in studies if s["study_name"] == name]
    return study["study_id"]


def test_a_storage_that_is_not_an_optuna_database_is_one_line(tmp_path, capsys):
    folder = _experiment_with_a_study(tmp_path)
    foreign = tmp_path / "notes.db"
    with closing(sqlite3.connect(foreign)) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
        connection.commit()
    before = foreign.read_bytes()
    resolved = (folder / RESOLVED_CONFIG).read_text()
    raw = yaml.safe_load(resolved)
    raw["optuna"]["storage"] = f"sqlite:///{foreign}"
    (folder / RESOLVED_CONFIG).write_text(yaml.safe_dump(raw))
    code, _, err = run(["dashboard", str(folder), "--port", "0"], capsys)
    assert code == 2
    assert_one_line_error(err, ["optuna.storage", str(foreign), "another schema"])
    assert foreign.read_bytes() == before
    (folder / RESOLVED_CONFIG).write_text(resolved)
    (folder / OPTUNA_DB).write_bytes(b"not a database at all\n" * 50)
    code, _, err = run(["dashboard", str(folder), "--port", "0"], capsys)
    assert code == 2
    assert_one_line_error(err, [str(folder.resolve() / OPTUNA_DB), "not an SQLite database"])
