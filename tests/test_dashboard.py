"""`muratune dashboard`: optuna-dashboard serves the experiment's study over HTTP, on loopback, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import requests

from muratune.config import dump_config, load_config
from muratune.dashboard import create_dashboard_server, study_storage
from muratune.errors import UserError
from muratune.layout import OPTUNA_DB, RESOLVED_CONFIG
from tests.helpers.search import DEMO_CONFIG as DEMO

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
