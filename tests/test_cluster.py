"""Multi-node searches on a real 2-node Ray cluster on loopback: placement on both nodes, and a lost node."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DRIVER = textwrap.dedent(
    '''
    """Search driver run in its own process, so the scripted trial is pickled by value for the cluster."""
    import json, sys, time
    from pathlib import Path

    def scripted_trial(config, experiment_config=None):
        import json, tempfile, time
        from pathlib import Path
        import ray
        import ray.tune

        start = 0
        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        node = ray.get_runtime_context().get_node_id()
        for epoch in range(start + 1, experiment_config["budget"]["max_epochs"] + 1):
            time.sleep(float(config["lr"]) * 1000)  # lr doubles as seconds-per-epoch / 1000 here
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                ray.tune.report(
                    {"epoch": epoch, "val_kappa": 0.1 * epoch, "val_auc": 0.5 + 0.05 * epoch, "node_id": node,
                     "resumed_from": start},
                    checkpoint=ray.tune.Checkpoint.from_directory(d),
                )

    if __name__ == "__main__":
        from muratune.config import load_config
        from muratune.search.run import run_search

        address, config_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
        result = run_search(load_config(config_path), address=address, trainable=scripted_trial, echo=print)
        rows = []
        for trial_dir in sorted(Path(result.experiment_dir, "trials").glob("trial_*")):
            for line in (trial_dir / "result.json").read_text().splitlines():
                r = json.loads(line)
                rows.append({"trial": trial_dir.name, "epoch": r["epoch"], "node_id": r["node_id"],
                             "resumed_from": r["resumed_from"]})
        Path(out).write_text(json.dumps(rows))
    '''
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A head node and one worker node, each a ``ray start --block`` process of ours, ended by PID alone."""

    def __init__(self, tmp: Path) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AIR_NEW_OUTPUT": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.log = (tmp / "nodes.log").open("w")

    def start(self) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        self.head = subprocess.Popen(
            [
                ray,
                "start",
                "--head",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                "--block",
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_nodes(1)
        # No graceful drain on the worker: SIGTERM then tears it down at once, like a lost or pre-empted node.
        self.worker = subprocess.Popen(
            [
                ray,
                "start",
                f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                "--block",
                "--disable-usage-stats",
            ],
            env={**self.env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_nodes(2)

    def _wait_for_nodes(self, count: int) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        status = None
        for _ in range(90):
            status = subprocess.run(
                [ray, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True, timeout=60
            )
            if status.returncode == 0 and status.stdout.count(" node_") >= count:
                return
            time.sleep(1)
        raise AssertionError(f"cluster did not reach {count} nodes:\n{status.stdout}\n{status.stderr}")

    @staticmethod
    def _end(node: subprocess.Popen | None) -> None:
        """SIGTERM makes ``ray start --block`` end the node's own processes; then reap it."""
        if node is None or node.poll() is not None:
            return
        node.terminate()
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=30)

    def stop_worker(self) -> None:
        self._end(self.worker)

    def stop(self) -> None:
        self._end(self.worker)
        self._end(self.head)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log.close()


@pytest.fixture()
def cluster(tmp_path):
    token = Path.home() / ".ray" / "auth_token"
    token_existed = token.exists()
    local = LocalCluster(tmp_path)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        if not token_existed and token.exists():
            token.unlink()


def _config(tmp_path: Path, root: Path, epochs: int, seconds_per_epoch: float, failures: int) -> Path:
    from muratune.config import dump_config, load_config

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    overrides = [
        f"data.root={root}",
        f"storage={tmp_path / 'runs'}",
        "name=cluster",
        "budget.num_samples=2",
        f"budget.max_epochs={epochs}",
        f"budget.grace_period={epochs}",
        "resources.cpus_per_trial=1",
        "resources.max_concurrent_trials=2",
        f"failure.max_failures={failures}",
        "space.backbone=resnet10t",
        f"space.lr={seconds_per_epoch / 1000}",
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text(dump_config(load_config(demo, overrides)))
    return path


def _run_driver(tmp_path: Path, cluster: LocalCluster, config: Path) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "rows.json"
    log = (tmp_path / "driver.log").open("w")
    return subprocess.Popen(
        [sys.executable, str(script), cluster.address, str(config), str(out)],
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_trials_run_on_both_nodes(cluster, tmp_path, synthetic_root):
    driver = _run_driver(tmp_path, cluster, _config(tmp_path, synthetic_root, 3, 1.0, 0))
    assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    rows = pd.DataFrame(json.loads((tmp_path / "rows.json").read_text()))
    assert rows.groupby("trial").epoch.max().tolist() == [3, 3]
    assert rows.node_id.nunique() == 2, "the two concurrent trials should be spread over both nodes"


def test_lost_worker_node_trials_resume_from_checkpoints(cluster, tmp_path, synthetic_root):
    driver = _run_driver(tmp_path, cluster, _config(tmp_path, synthetic_root, 6, 2.0, 3))
    trials = tmp_path / "runs" / "cluster" / "trials"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(trials.glob("trial_*/checkpoint_000001"))) < 2:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(0.5)
    cluster.stop_worker()
    assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    rows = pd.DataFrame(json.loads((tmp_path / "rows.json").read_text()))
    assert rows.groupby("trial").epoch.max().tolist() == [6, 6]
    moved = rows[rows.resumed_from > 0]
    assert not moved.empty, "the trial on the lost node should have been restored from its checkpoint"
    assert moved.node_id.nunique() == 1
    summary = pd.read_csv(tmp_path / "runs" / "cluster" / "search_summary.csv")
    assert set(summary.state) == {"COMPLETE"}
