"""Every shipped config validates; broken configs and --set overrides fail with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from muratune.config import ExperimentConfig, apply_overrides, load_config, parse_override
from muratune.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
DEMO = REPO / "configs" / "demo.yaml"


def demo_raw() -> dict:
    return yaml.safe_load(DEMO.read_text(encoding="utf-8"))


def load_checked(path: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a config and check its space against timm and the policy registry, as `muratune search` does."""
    from muratune.trainables.space import validate_space

    config = load_config(path, overrides)
    validate_space(config)
    return config


def assert_one_line(err: pytest.ExceptionInfo[UserError], *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------- shipped configs
def test_the_documented_configs_are_shipped() -> None:
    assert {"demo.yaml", "mura-densenet.yaml", "mura-wide.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path) -> None:
    config = load_checked(path)
    assert config.name == path.stem
    assert config.budget.grace_period <= config.budget.max_epochs


def test_mura_densenet_is_the_paper_setup_as_one_point() -> None:
    config = load_checked(REPO / "configs" / "mura-densenet.yaml")
    assert all(len(entry.candidate_values()) == 1 for entry in config.space.entries().values())
    assert config.space.defaults() == {
        "backbone": "densenet169",
        "lr": 1e-4,
        "batch_size": 8,
        "finetune_depth": "all",
        "augment_policy": "mura-paper",
        "weight_decay": 0.0,
        "optimizer": "adam",
    }
    assert (config.data.image_size, config.data.in_chans) == (320, 3)
    assert config.model.pretrained is True
    assert config.train.schedule == "plateau"
    assert config.budget.num_samples == 1
    assert config.resources.gpus_per_trial == 1


@pytest.mark.parametrize("name", ["mura-densenet.yaml", "mura-wide.yaml"])
def test_optuna_can_sample_the_space(name: str) -> None:
    """Ray's OptunaSearch refuses a space of constants only, which is why mura-densenet has a one-value choice."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from muratune.search.space import create_search_space

    config = load_config(REPO / "configs" / name)
    space = create_search_space(config.space)
    searcher = OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    assert searcher.set_search_properties("m", "max", space)
    suggested = searcher.suggest("trial_0")
    point = {**space, **suggested}
    for key, entry in config.space.entries().items():
        if entry.type in ("choice", "fixed"):
            assert point[key] in entry.candidate_values(), key
        else:
            assert entry.low <= point[key] <= entry.high, key


def test_mura_wide_covers_every_policy_and_backbone_family() -> None:
    from muratune.data.augment import list_policies

    config = load_checked(REPO / "configs" / "mura-wide.yaml")
    space = config.space
    assert set(space.augment_policy.candidate_values()) == set(list_policies())
    assert {"densenet121", "densenet169", "resnet50", "efficientnet_b3", "convnext_tiny", "inception_v3"} <= set(
        space.backbone.candidate_values()
    )
    assert "all" in space.finetune_depth.candidate_values()
    assert space.lr.type == "loguniform"
    assert config.budget.num_samples == 64 and config.budget.grace_period == 3
    assert 0 < config.resources.gpus_per_trial < 1
    assert config.storage.startswith("s3://")


# ------------------------------------------------------------------------------------------- broken configs
def _set(section: str, key: str, value: object) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        raw.setdefault(section, {})[key] = value

    return edit


BROKEN: dict[str, tuple[Callable[[dict], None], tuple[str, ...]]] = {
    "unknown key": (_set("budget", "num_sample", 4), ("budget.num_sample", "unknown key", "'num_samples'")),
    "unknown top-level key": (lambda raw: raw.update(spaces={}), ("spaces", "unknown key", "'space'")),
    "wrong type": (_set("budget", "max_epochs", "ten"), ("budget.max_epochs", "integer")),
    "zero loguniform low": (_set("space", "lr", {"type": "loguniform", "low": 0, "high": 1e-3}), ("space.lr", "low")),
    "negative fixed lr": (_set("space", "lr", -1), ("lr", "positive")),
    "empty choice": (_set("space", "batch_size", {"type": "choice", "values": []}), ("space.batch_size", "non-empty")),
    "range without high": (_set("space", "lr", {"type": "loguniform", "low": 1e-4}), ("space.lr", "'high'")),
    "unknown optimizer": (_set("space", "optimizer", "adamm"), ("optimizer", "adamm")),
    "grace beyond budget": (_set("budget", "max_epochs", 2), ("max_epochs", "grace_period")),
    "unknown body part": (_set("data", "body_parts", ["XR_KNEE"]), ("data.body_parts", "XR_KNEE")),
    "log on a uniform range": (
        _set("space", "lr", {"type": "uniform", "low": 1e-4, "high": 1e-3, "log": True}),
        ("space.lr", "'log: true' is for int ranges"),
    ),
    "log int from zero": (
        _set("space", "batch_size", {"type": "int", "low": 0, "high": 64, "log": True}),
        ("space.batch_size", "'low' >= 1"),
    ),
    "300-character name": (lambda raw: raw.update(name="a" * 300), ("name", "short folder name", "300 characters")),
    "name holding a NUL": (lambda raw: raw.update(name="exp\x00x"), ("name", "short folder name", "\\x00")),
    "name with a slash": (lambda raw: raw.update(name="../up"), ("name", "short folder name")),
    "fractional int bound": (
        _set("space", "batch_size", {"type": "int", "low": 8, "high": 64.5}),
        ("space.batch_size", "whole"),
    ),
}


@pytest.mark.parametrize(("edit", "fragments"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_config_names_the_key(tmp_path: Path, edit: Callable[[dict], None], fragments: tuple[str, ...]) -> None:
    raw = demo_raw()
    edit(raw)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_checked(path)
    assert_one_line(err, str(path), *fragments)


def test_unknown_backbone_suggests_close_timm_names(tmp_path: Path) -> None:
    raw = demo_raw()
    raw["space"]["backbone"] = {"type": "choice", "values": ["resnet10t", "resnet10x"]}
    path = tmp_path / "backbone.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_checked(path)
    assert_one_line(err, "space.backbone", "'resnet10x'", "resnet10t")


def test_unknown_policy_names_the_key(tmp_path: Path) -> None:
    raw = demo_raw()
    raw["space"]["augment_policy"] = {"type": "choice", "values": ["flip", "flips"]}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_checked(path)
    assert_one_line(err, "space.augment_policy", "'flips'", "did you mean 'flip'")


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbudget:\n  num_samples: 4\n  max_epochs: [1, 2\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(path)
    message = assert_one_line(err, "invalid YAML")
    assert message.startswith(f"{path}:"), message
    line = int(message.removeprefix(f"{path}:").split(":")[0])
    assert 4 <= line <= 5, message  # the unclosed list opens on line 4; PyYAML reports where it gives up


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_config(tmp_path / "absent.yaml")
    assert_one_line(err, "absent.yaml", "not found")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(listing)
    assert_one_line(err, "list.yaml", "mapping")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            b"name: a\nbudget:\n  num_samples: 64\nbudget:\n  num_samples: 8\n",
            (":4:", "duplicate key 'budget'", "line 2"),
        ),
        (b"name: a\nbudget:\n  num_samples: 64\n  num_samples: 8\n", (":4:", "duplicate key 'num_samples'", "line 3")),
        (b"", ("the config file is empty",)),
        (b"# only a comment\n", ("the config file is empty",)),
        (b"name: caf\xe9\n", ("not UTF-8 text", "byte 9: 0xe9", "UTF-8")),
    ],
    ids=["duplicate top-level key", "duplicate nested key", "empty", "comments only", "latin-1"],
)
def test_duplicate_keys_empty_files_and_other_encodings_are_refused(
    tmp_path: Path, text: bytes, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    with pytest.raises(UserError) as err:
        load_config(path)
    message = assert_one_line(err, str(path), *fragments)
    assert message.startswith(str(path))
    assert path.read_bytes() == text


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: bom\nbudget: &b {num_samples: 3}\n".encode())
    assert load_config(path).name == "bom" and load_config(path).budget.num_samples == 3


# ------------------------------------------------------------------------------------------- --set overrides
def test_set_overrides_apply_before_validation() -> None:
    config = load_config(DEMO, ["budget.num_samples=4", "space.lr=0.001", "data.body_parts=[XR_WRIST]"])
    assert config.budget.num_samples == 4
    assert config.space.lr.type == "fixed" and config.space.lr.value == 0.001
    assert config.data.body_parts == ["XR_WRIST"]
    assert load_config(DEMO).budget.num_samples == 8  # the file itself is untouched


def test_apply_overrides_creates_missing_sections() -> None:
    raw = apply_overrides({}, ["resources.gpus_per_trial=0.25", "name=x"])
    assert raw == {"resources": {"gpus_per_trial": 0.25}, "name": "x"}
    assert parse_override("space.backbone={type: choice, values: [a, b]}") == (
        ["space", "backbone"],
        {"type": "choice", "values": ["a", "b"]},
    )


@pytest.mark.parametrize(("override", "fragment"), [("foo", "KEY=VALUE"), ("=3", "empty key")])
def test_malformed_set_errors_clearly(override: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        load_config(DEMO, [override])
    assert_one_line(err, f"--set {override!r}", fragment)


def test_set_with_unknown_key_names_it() -> None:
    with pytest.raises(UserError) as err:
        load_config(DEMO, ["budget.num_sampels=3"])
    assert_one_line(err, "budget.num_sampels", "'num_samples'")


# ------------------------------------------------------------------------------------------- CLI
def test_cli_reports_a_config_error_in_one_line() -> None:
    cmd = [sys.executable, "-m", "muratune.cli", "search", "configs/demo.yaml", "--data", "/nonexistent"]
    cmd += ["--set", "budget.num_sampels=3"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "budget.num_sampels" in lines[0] and "configs/demo.yaml" in lines[0]


# ------------------------------------------------------------------------------------------- space syntax
def test_log_int_range_samples_log_uniform_integers_within_bounds() -> None:
    """``{type: int, log: true}`` becomes tune.lograndint: whole numbers, both bounds reachable, small ones common."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from muratune.config import SpaceEntry
    from muratune.search.space import create_domain

    entry = SpaceEntry.model_validate({"type": "int", "low": 16, "high": 512, "log": True})
    domain = create_domain(entry)
    assert isinstance(domain, tune.search.sample.Integer)
    assert isinstance(domain.get_sampler(), tune.search.sample.LogUniform)
    assert entry.default() == 91  # the geometric middle, as LCBench's own default batch size
    searcher = OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    assert searcher.set_search_properties("m", "max", {"width": domain})
    values = [searcher.suggest(f"t{i}")["width"] for i in range(400)]
    assert all(isinstance(v, int) and 16 <= v <= 512 for v in values)
    # Log-uniform: about half the draws fall below the geometric middle (a plain randint puts ~15% there).
    assert 0.4 < sum(v < 91 for v in values) / len(values) < 0.6
    assert min(values) < 20 and max(values) > 400


def test_plain_int_range_is_unchanged() -> None:
    from ray import tune

    from muratune.config import SpaceEntry
    from muratune.search.space import create_domain

    domain = create_domain(SpaceEntry.model_validate({"type": "int", "low": 1, "high": 5}))
    assert isinstance(domain.get_sampler(), tune.search.sample.Uniform)
    assert (domain.lower, domain.upper) == (1, 6)


def test_startup_trials_scale_with_concurrent_workers() -> None:
    """TPE's start-up covers trials per concurrent worker (1 by default, 5 under stopping-type ASHA), and never fewer
    than configured."""
    from muratune.config import OptunaConfig

    assert OptunaConfig(n_startup_trials=4).startup_trials(1) == 4
    assert OptunaConfig(n_startup_trials=4).startup_trials(8) == 8
    assert load_config(None, values={"budget.scheduler": "asha"}).optuna.startup_trials(8) == 40
    assert OptunaConfig(n_startup_trials=50).startup_trials(8) == 50
    assert OptunaConfig(n_startup_trials=4, startup_trials_per_worker=2).startup_trials(8) == 16
    assert load_config(REPO / "configs" / "mura-wide.yaml").optuna.startup_trials(8) == 16
    assert load_config(REPO / "configs" / "demo.yaml").optuna.startup_trials(2) == 4  # 8 trials: TPE picks 4


@pytest.mark.parametrize(
    ("values", "scheduler", "startup", "per_worker"),
    [
        ({}, "asha-promotion", "sobol", 1),  # the defaults
        ({"optuna.sampler": "random"}, "asha-promotion", "random", 1),  # random draws its own
        ({"optuna.sampler": "tpe"}, "asha", "random", 5),  # tpe would sample at random under promotion
        ({"resources.workers_per_trial": 2}, "asha", "random", 5),  # a data-parallel trial cannot resume
        ({"budget.brackets": 3}, "asha", "random", 5),  # promotion runs one bracket
        ({"space.lr": 1e-3, "space.backbone": "resnet18", "space.batch_size": 32}, "asha", "random", 5),  # fixed
        ({"budget.scheduler": "asha"}, "asha", "random", 5),
        ({"budget.scheduler": "none"}, "none", "random", 5),
        ({"budget.scheduler": "asha", "optuna.startup": "sobol"}, "asha", "sobol", 5),  # what is set stays set
        ({"optuna.sampler": "tpe", "optuna.startup_trials_per_worker": 2}, "asha", "random", 2),
    ],
)
def test_the_default_scheduler_and_start_up_give_way_where_promotion_cannot_run(
    values: dict, scheduler: str, startup: str, per_worker: int
) -> None:
    """Unset, the scheduler is promotion-type ASHA where it can run and stopping-type ASHA elsewhere; unset start-up
    settings follow the scheduler; the resolved config reads back the same."""
    config = load_config(None, values=values)
    assert (config.budget.scheduler, config.optuna.startup) == (scheduler, startup)
    assert config.optuna.startup_trials_per_worker == per_worker
    assert ExperimentConfig.model_validate(config.model_dump(mode="json")) == config


def test_sections_given_as_objects_are_left_as_they_were() -> None:
    """The defaults that give way resolve in the experiment's copy: the caller's sections can build another one."""
    from muratune.config.sections import BudgetConfig, OptunaConfig

    budget, tpe = BudgetConfig(max_epochs=8), OptunaConfig(sampler="tpe")
    stopping = ExperimentConfig(budget=budget, optuna=tpe)
    assert (stopping.budget.scheduler, stopping.optuna.startup, stopping.optuna.startup_trials_per_worker) == (
        "asha",
        "random",
        5,
    )
    assert (budget.scheduler, budget.model_fields_set) == ("asha-promotion", {"max_epochs"})
    assert (tpe.startup, tpe.model_fields_set) == ("sobol", {"sampler"})
    assert ExperimentConfig(budget=budget).budget.scheduler == "asha-promotion"  # rung-tpe: promotion can run
    promotion = ExperimentConfig()
    promotion.optuna = tpe  # an assigned section is validated as a given one
    assert promotion.optuna is not tpe and (tpe.startup, tpe.model_fields_set) == ("sobol", {"sampler"})


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({"budget.scheduler": "asha-promotion", "optuna.sampler": "tpe"}, "needs optuna.sampler rung-tpe or random"),
        ({"budget.scheduler": "asha-promotion", "budget.brackets": 3}, "runs one bracket"),
        ({"optuna.sampler": "tpe", "optuna.startup": "sobol"}, "optuna.startup: sobol needs optuna.sampler: rung-tpe"),
    ],
)
def test_what_is_set_against_promotion_or_sobol_is_refused_not_changed(values: dict, refusal: str) -> None:
    with pytest.raises(UserError, match=refusal):
        load_config(None, values=values)


def test_a_relative_data_root_is_made_absolute_where_the_command_runs(tmp_path: Path, monkeypatch) -> None:
    """Tune runs trials in their own folders, so `--data data` must not reach them as a relative path."""
    monkeypatch.chdir(tmp_path)
    assert load_config(None, values={"data.root": "data"}).data.root == str(tmp_path / "data")
    assert load_config(None, values={"data.root": "/mnt/mura"}).data.root == "/mnt/mura"
    assert load_config(None, values={"data.root": "~/mura"}).data.root == "~/mura"
