"""cluster.yaml passes Ray's own autoscaler schema offline and has the node types and setup a search relies on."""

from __future__ import annotations

import copy
import math
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any connection attempt fail, so a check that needs AWS or the internet errors instead of hanging."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("cluster.yaml checks must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture()
def raw() -> dict:
    """cluster.yaml as written (a fresh copy per test)."""
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


def ray_check(config: dict) -> dict:
    """Run what `ray up` runs before it contacts the provider; return the prepared config.

    `ray up` calls ``prepare_config`` (merge with ray/autoscaler/aws/defaults.yaml, fold ``setup_commands`` into
    the head and worker lists, fill per-type min/max workers), then imports the AWS provider (boto3) to detect
    node resources, then ``validate_config`` (the JSON schema plus cross-field checks). For AWS,
    ``prepare_config`` only reads the bundled defaults file, so the provider step is the only one skipped here:
    it needs boto3 and credentials, and our node types declare their resources explicitly.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_worker_types(config: dict) -> dict[str, dict]:
    """Worker node types that advertise at least one GPU."""
    head = config["head_node_type"]
    return {
        name: node
        for name, node in config["available_node_types"].items()
        if name != head and node.get("resources", {}).get("GPU", 0) >= 1
    }


def test_ray_schema_accepts_cluster_yaml_offline(raw: dict, no_network: None) -> None:
    loaded_before = {name for name in sys.modules if name.split(".")[0] in ("boto3", "botocore")}
    prepared = ray_check(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    loaded_after = {name for name in sys.modules if name.split(".")[0] in ("boto3", "botocore")}
    assert loaded_after == loaded_before, "the offline check imported the AWS SDK"


def test_provider_is_aws_with_region(raw: dict) -> None:
    provider = raw["provider"]
    assert provider["type"] == "aws"
    assert isinstance(provider["region"], str) and provider["region"]
    zones = provider["availability_zone"].split(",")
    assert all(zone.startswith(provider["region"]) for zone in zones), "zones must be in the provider's region"
    assert isinstance(provider["cache_stopped_nodes"], bool)
    assert raw["auth"]["ssh_user"] == "ubuntu"


def test_head_runs_the_driver_only(raw: dict) -> None:
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials must not be scheduled on the head"
    assert head["resources"].get("GPU", 0) == 0
    assert head.get("max_workers", 0) == 0


def test_gpu_worker_type_autoscales_from_zero(raw: dict) -> None:
    workers = gpu_worker_types(raw)
    assert workers, "no worker node type advertises a GPU"
    for name, node in workers.items():
        assert node["min_workers"] == 0, f"{name}: GPU nodes should scale down to zero"
        assert 1 <= node["max_workers"] <= raw["max_workers"], name
        assert node["resources"].get("CPU", 0) >= 1, name


@pytest.mark.parametrize("key", ["InstanceType", "ImageId"])
def test_every_node_type_names_instance_and_image(raw: dict, key: str) -> None:
    for name, node in raw["available_node_types"].items():
        value = node["node_config"].get(key)
        assert isinstance(value, str) and value, f"{name}: node_config.{key} missing"
        # An empty ImageId or `latest_dlami` falls back to Ray's default: an Ubuntu 18.04 image too old for muratune.
        assert value.lower() != "latest_dlami", name


def test_gpu_workers_can_reach_s3_storage(raw: dict) -> None:
    for name, node in gpu_worker_types(raw).items():
        assert "Arn" in node["node_config"].get("IamInstanceProfile", {}), f"{name}: trials write checkpoints to S3"


def test_setup_installs_muratune_from_the_mounted_repo(raw: dict) -> None:
    repo_targets = [remote for remote, local in raw["file_mounts"].items() if (REPO / local).resolve() == REPO]
    assert repo_targets, "file_mounts does not copy the repository"
    target = repo_targets[0].replace("~", "$HOME", 1)
    installs = [cmd for cmd in raw["setup_commands"] if "pip install" in cmd and "muratune" in cmd]
    assert installs, "setup_commands do not install muratune"
    assert any(target in cmd for cmd in installs), f"muratune is not installed from the mounted {target}"
    assert any("ray[" in cmd and "pip install" in cmd for cmd in raw["setup_commands"])
    assert any("boto3" in cmd for cmd in raw["head_setup_commands"])


def test_setup_commands_reach_head_and_workers(raw: dict, no_network: None) -> None:
    prepared = ray_check(raw)
    for command in raw["setup_commands"]:
        assert command in prepared["head_setup_commands"]
        assert command in prepared["worker_setup_commands"]


def test_wide_search_fits_the_gpu_workers(raw: dict) -> None:
    from muratune.config import load_config

    config = load_config(REPO / "configs" / "mura-wide.yaml")
    res = config.resources
    best = 0
    for node in gpu_worker_types(raw).values():
        per_node = min(node["resources"]["CPU"] // res.cpus_per_trial, node["resources"]["GPU"] // res.gpus_per_trial)
        assert per_node >= 1, "one trial does not fit on a GPU worker"
        best = max(best, per_node * node["max_workers"])
    assert best >= res.max_concurrent_trials, "the GPU workers cannot run max_concurrent_trials at once"
    assert math.isclose(res.gpus_per_trial, 0.5)


def _drop_head_type(config: dict) -> None:
    config["available_node_types"].pop(config["head_node_type"])


def _set_worker(field: str, value: Any) -> Any:
    def edit(config: dict) -> None:
        name = next(iter(gpu_worker_types(config)))
        config["available_node_types"][name][field] = value

    return edit


BROKEN = {
    "unknown top-level key": (lambda c: c.update(max_worker=3), "'max_worker' was unexpected"),
    "max_workers as a string": (lambda c: c.update(max_workers="8"), "is not of type 'integer'"),
    "fractional GPU resource": (_set_worker("resources", {"CPU": 8, "GPU": 0.5}), "is not of type 'integer'"),
    "min_workers above max_workers": (_set_worker("min_workers", 99), "max_workers"),
    "node type without node_config": (
        lambda c: c["available_node_types"][c["head_node_type"]].pop("node_config"),
        "'node_config' is a required property",
    ),
    "head type not defined": (_drop_head_type, "head_node_type"),
    "unknown node type key": (_set_worker("min_worker", 0), "'min_worker' was unexpected"),
    "commands not strings": (
        lambda c: c.update(worker_setup_commands=[["pip", "install", "muratune"]]),
        "is not of type 'string'",
    ),
}


@pytest.mark.parametrize(("edit", "match"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_copies_fail_validation(raw: dict, edit: Any, match: str, no_network: None) -> None:
    import jsonschema

    edit(raw)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(match)):
        ray_check(raw)
