"""Shared fixtures: one small synthetic MURA dataset and one Ray session per test run, isolated caches."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.search import DEMO_CONFIG, tiny_overrides

# Timing varies a lot on shared CI machines: no per-example deadline, and no "too slow" health check.
settings.register_profile("muratune", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("muratune")

SYNTH_STUDIES = 240


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point MURATUNE_CACHE at a session temp folder so tests never touch the user's cache."""
    previous = os.environ.get("MURATUNE_CACHE")
    os.environ["MURATUNE_CACHE"] = str(tmp_path_factory.mktemp("muratune-cache"))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    yield
    if previous is None:
        os.environ.pop("MURATUNE_CACHE", None)
    else:
        os.environ["MURATUNE_CACHE"] = previous


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MURA dataset (easy findings, 256 px), built once per session. Treat it as read-only."""
    from muratune.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, studies=SYNTH_STUDIES, seed=0, difficulty="easy", long_side=256, workers=2)
    return root


@pytest.fixture()
def synthetic_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    target = tmp_path / "data"
    shutil.copytree(synthetic_root, target)
    return target


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two spinning threads make each step ~10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One small local Ray instance shared by every test that needs it; shut down at the end."""
    import ray

    token = Path.home() / ".ray" / "auth_token"
    token_existed = token.exists()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trial functions defined in test modules are imported by name (tests.test_x) on Ray's workers: let them find
    # the tests package.
    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        object_store_memory=150 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()
    if not token_existed and token.exists():
        token.unlink()


@pytest.fixture(scope="session")
def tiny_experiment(ray_session, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished real search (3 resnet10t trials, 3 epochs, 64 px) for the stages after search. Read-only."""
    from muratune.config import load_config
    from muratune.search.run import run_search

    demo = DEMO_CONFIG
    storage = tmp_path_factory.mktemp("experiments")
    overrides = tiny_overrides(
        synthetic_root,
        storage,
        name="tiny",
        **{"budget.num_samples": 3, "budget.max_epochs": 3, "budget.grace_period": 2, "optuna.n_startup_trials": 3},
    )
    result = run_search(load_config(demo, overrides), echo=lambda _: None)
    return result.experiment_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
