"""`muratune doctor`: the table and JSON, the cores-per-GPU arithmetic, a real quick run on the CPU, GPU paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from muratune.cli import main
from muratune.config import ExperimentConfig
from muratune.doctor.checks import cores_verdict
from muratune.doctor.probes import loader_cores_needed, training_probe
from muratune.doctor.report import Check, DoctorReport, timed
from muratune.doctor.run import all_checks, doctor_paths, run_doctor, shrink

GPU_CHECKS = ("cuda_devices", "training_probe", "cores_per_gpu", "fractional_gpu_trials", "data_parallel")


def _node(address: str, cpus: float, gpus: float) -> dict:
    return {"NodeManagerAddress": address, "NodeID": address, "Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}


def test_loader_cores_needed_is_trainer_rate_over_per_core_rate():
    assert loader_cores_needed(1200.0, 300.0) == pytest.approx(4.0)
    assert loader_cores_needed(100.0, 400.0) == pytest.approx(0.25)
    assert loader_cores_needed(100.0, 0.0) == math.inf


def test_cores_verdict_names_the_gpu_nodes_that_fall_short():
    nodes = [_node("10.0.0.1", 32, 4), _node("10.0.0.2", 8, 4), _node("10.0.0.3", 16, 0)]
    status, detail, rows = cores_verdict(5.0, nodes)
    assert status == "warn"
    assert "10.0.0.2 (2)" in detail and "10.0.0.1" not in detail
    assert [(r["address"], r["cpus_per_gpu"], r["enough"]) for r in rows] == [
        ("10.0.0.1", 8.0, True),
        ("10.0.0.2", 2.0, False),
    ]
    status, _, _ = cores_verdict(2.0, nodes)
    assert status == "pass"


def test_report_table_and_json_hold_the_same_checks(tmp_path: Path):
    report = DoctorReport(quick=True, wall_s=12.3)
    report.add(Check("ray_cluster", "pass", "1 node(s), 2 CPUs, 0 GPUs", "127.0.0.1: 2 CPU, 0 GPU"))
    report.add(Check("cuda_devices", "skip", "no GPU", "no GPU in the Ray cluster"))
    report.add(Check("training_probe", "fail", "error", "RuntimeError: boom"))
    table = report.format_table()
    for name, status in (("ray_cluster", "pass"), ("cuda_devices", "skip"), ("training_probe", "fail")):
        line = next(line for line in table.splitlines() if name in line)
        assert status in line
    assert "1 pass, 1 fail, 1 skip" in table
    assert report.exit_code == 1
    report.write(tmp_path / "doctor.json")
    saved = json.loads((tmp_path / "doctor.json").read_text())
    assert [(c["name"], c["status"], c["figure"]) for c in saved["checks"]] == [
        ("ray_cluster", "pass", "1 node(s), 2 CPUs, 0 GPUs"),
        ("cuda_devices", "skip", "no GPU"),
        ("training_probe", "fail", "error"),
    ]
    assert saved["counts"] == {"pass": 1, "warn": 0, "fail": 1, "skip": 1} and saved["quick"] is True
    assert not list(tmp_path.glob(".doctor.json.*"))


def test_a_check_that_raises_is_recorded_as_failed_and_the_next_one_runs():
    report = DoctorReport()
    with timed(report, "first", echo=lambda _: None):
        raise RuntimeError("no route to host\nmore")
    with timed(report, "second", echo=lambda _: None) as slot:
        slot.update(status="warn", figure="3 img/s")
    assert [(c.name, c.status, c.detail) for c in report.checks] == [
        ("first", "fail", "RuntimeError: no route to host"),
        ("second", "warn", ""),
    ]
    assert report.exit_code == 1
    with pytest.raises(ValueError, match="status"):
        Check("x", "ok", "1")


def test_quick_shrinks_the_config_to_one_small_epoch(tmp_path: Path):
    config = ExperimentConfig.model_validate({"data": {"image_size": 320}, "space": {"backbone": "densenet121"}})
    small = shrink(config, True, tmp_path, str(tmp_path / "runs"), steps=2)
    assert small.data.image_size == 32 and small.data.root == str(tmp_path)
    assert small.space.defaults()["backbone"] == "resnet10t" and small.space.defaults()["batch_size"] <= 16
    assert (small.budget.max_epochs, small.train.max_steps_per_epoch, small.model.pretrained) == (1, 2, False)
    full = shrink(config, False, tmp_path, str(tmp_path / "runs"), steps=10)
    assert full.data.image_size == 320 and full.space.defaults()["backbone"] == "densenet121"


def test_the_data_parallel_check_runs_two_workers_under_the_default_scheduler(tmp_path: Path):
    """On a 2-GPU node the check's trial has 2 workers, which promotion-type ASHA (the default) refuses: none runs."""
    from muratune.doctor.context import with_values
    from muratune.doctor.searches import data_parallel_values

    small = shrink(ExperimentConfig(), True, tmp_path, str(tmp_path / "runs"), steps=2)
    assert small.budget.scheduler == "asha-promotion"
    ddp = with_values(small, data_parallel_values(2, 4.0, use_gpu=True))
    assert (ddp.resources.workers_per_trial, ddp.budget.scheduler) == (2, "none")


def test_the_checks_fixing_the_only_searched_entries_resolve_the_default_scheduler_again(tmp_path: Path):
    """A config searching only backbone and batch size has nothing searched once the checks fix both: the default
    scheduler gives way there, as it would for the user, instead of being refused as if set."""
    config = ExperimentConfig.model_validate(
        {
            "space": {
                "backbone": {"type": "choice", "values": ["resnet10t", "resnet14t"]},
                "batch_size": {"type": "choice", "values": [8, 16]},
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "finetune_depth": "all",
                "augment_policy": "flip",
                "optimizer": "adam",
            }
        }
    )
    assert config.budget.scheduler == "asha-promotion"
    small = shrink(config, True, tmp_path, str(tmp_path / "runs"), steps=2)
    assert not small.space.searched() and small.budget.scheduler == "asha"


def test_doctor_folders_are_fresh_and_under_the_storage(tmp_path: Path):
    token, local, storage = doctor_paths(str(tmp_path / "runs"))
    assert local.name == f"muratune-doctor-{token}" and not local.exists()
    assert storage == str(tmp_path / "runs" / f".doctor-{token}")
    token, _, storage = doctor_paths("s3://bucket/muratune/")
    assert storage == f"s3://bucket/muratune/.doctor-{token}"
    assert doctor_paths("runs")[0] != token


def test_a_missing_data_folder_is_a_user_error(tmp_path: Path, capsys):
    config = tmp_path / "doctor.yaml"
    config.write_text(f"storage: {tmp_path / 'runs'}\n")
    args = ["doctor", "--data", str(tmp_path / "nowhere"), "--config", str(config), "--out", str(tmp_path / "d.json")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "--data" in capsys.readouterr().err and not (tmp_path / "d.json").exists()
    assert not list((tmp_path / "runs").glob(".doctor-*"))


def _probe(root: Path, out: Path, gpus: float) -> dict:
    from muratune.trainables.trial import trial_inputs

    config = ExperimentConfig.model_validate(
        {
            "data": {"root": str(root), "image_size": 32, "num_workers": 0},
            "resources": {"gpus_per_trial": gpus},
            "space": {"batch_size": 8},
        }
    )
    hparams, _ = trial_inputs(config.space.defaults(), config)
    return training_probe(config.model_dump(mode="json"), hparams, steps=3, warmup=1, out=str(out))


def test_training_probe_on_the_cpu_leaves_a_checkpoint_that_cam_and_serve_load(synthetic_root: Path, tmp_path: Path):
    from muratune.ensemble.load import load_ensemble

    got = _probe(synthetic_root, tmp_path / "probe", gpus=0)
    assert got["device"] == "cpu" and got["amp"] == "None" and got["memory_kind"] == "process_peak_rss"
    assert got["images_per_s"] > 0 and got["peak_memory_mib"] > 0 and got["batch_size"] == 8
    assert set(got["files"]) >= {"model.safetensors", "trial.json"}
    assert len(load_ensemble(tmp_path / "probe", device="cpu").members) == 1


@pytest.mark.gpu
def test_training_probe_on_the_gpu_uses_amp_and_channels_last(synthetic_root: Path, tmp_path: Path):
    got = _probe(synthetic_root, tmp_path / "probe", gpus=1)
    assert got["device"] != "cpu" and got["amp"] in ("bfloat16", "float16") and got["channels_last"] is True
    assert got["memory_kind"] == "cuda_max_allocated" and got["peak_memory_mib"] > 0


@pytest.mark.slow
def test_doctor_quick_passes_on_the_cpu_and_records_every_check(ray_session, tmp_path: Path, capsys):
    config = tmp_path / "doctor.yaml"
    config.write_text(f"storage: {tmp_path / 'runs'}\n")
    out = tmp_path / "doctor.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--quick", "--config", str(config), "--out", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    checks = {c["name"]: c for c in saved["checks"]}
    assert list(checks) == [name for name, _ in all_checks()]
    assert all(c["status"] in ("pass", "warn", "skip") and c["figure"] for c in checks.values()), checks
    assert exit_info.value.code == 0
    assert checks["cuda_devices"]["status"] == "skip" and "no GPU" in checks["cuda_devices"]["detail"]
    assert checks["cores_per_gpu"]["status"] == "skip"
    for name in GPU_CHECKS[1:]:
        assert "no GPU" in checks[name]["detail"], name
    assert checks["training_probe"]["data"]["images_per_s"] > 0
    assert checks["training_probe"]["data"]["peak_memory_mib"] > 0
    assert checks["fractional_gpu_trials"]["data"]["complete"] == 4
    assert checks["data_parallel"]["data"]["backend"] == "gloo"
    assert checks["serve_replica"]["data"]["status_code"] == 200
    assert "serve_replica" in printed and "muratune doctor" in printed
    assert not list((tmp_path / "runs").glob(".doctor-*"))  # the doctor removes its own folders
    assert not Path(checks["dataset"]["data"]["root"]).parent.exists()


@pytest.mark.slow
@pytest.mark.gpu
def test_doctor_exercises_every_gpu_path_on_a_gpu(ray_session, tmp_path: Path):
    report = run_doctor(quick=True, config=ExperimentConfig(storage=str(tmp_path / "runs")), echo=lambda _: None)
    checks = {c.name: c for c in report.checks}
    assert not report.failed, report.format_table()
    assert checks["cuda_devices"].status in ("pass", "warn")
    probe = checks["training_probe"].data
    assert probe["memory_kind"] == "cuda_max_allocated" and probe["peak_memory_mib"] > 0
    assert probe["amp"] in ("bfloat16", "float16") and probe["channels_last"] is True
    assert checks["fractional_gpu_trials"].data["gpus_per_trial"] == 0.25
    assert checks["fractional_gpu_trials"].data["complete"] == 4
    assert checks["data_parallel"].data["backend"] == "nccl"
    assert checks["cam_export"].data["device"] != "cpu"
    assert checks["serve_replica"].data["device"].startswith("cuda")
