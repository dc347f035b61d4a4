"""Preparing a search's experiment folder: checks that touch nothing, the data preflight, and the shared cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from muratune.config import ExperimentConfig, dump_config
from muratune.errors import UserError
from muratune.experiment_folder import load_resolved_config
from muratune.fileio import Replacement, refuse_foreign, write_json, write_marker, write_text
from muratune.layout import CACHE_JSON, EXPERIMENT_KIND, RESOLVED_CONFIG, TRIALS_DIR, experiment_dir

SHOWN_EXCLUDED = 5  # excluded images printed by name; cache.json lists them all


def check_experiment(config: ExperimentConfig, resume: bool, overwrite: bool) -> bool:
    """Refuse to resume a search that is not there, or to replace one without ``overwrite``; touch nothing.

    Returns:
        Whether an experiment folder already exists.
    """
    exp_dir = experiment_dir(config)
    exists = (exp_dir / RESOLVED_CONFIG).exists() or (exp_dir / TRIALS_DIR).exists()
    if resume and not (exp_dir / TRIALS_DIR).exists():
        raise UserError(f"{exp_dir}: no search to resume here (no {TRIALS_DIR}/ folder)")
    if not resume and exists and not overwrite:
        raise UserError(f"{exp_dir}: experiment already exists; pass --resume to continue it or --overwrite")
    return exists


def prepare_experiment(
    config: ExperimentConfig, resume: bool, overwrite: bool, replacement: Replacement | None = None
) -> Path:
    """Create (or check) the experiment folder, mark it as muratune's and write the resolved config.

    With ``overwrite`` an existing experiment (one muratune made) is moved aside by ``replacement``, not deleted: the
    search's `replacing_folder` deletes it once the new search has finished, so an interrupted search leaves it
    restorable (without a ``replacement`` it stays aside).

    Returns:
        The experiment folder.
    """
    exp_dir = experiment_dir(config)
    exists = check_experiment(config, resume, overwrite)
    if resume:
        return exp_dir
    if exists:
        refuse_foreign(exp_dir, EXPERIMENT_KIND)
        (replacement or Replacement(exp_dir, EXPERIMENT_KIND)).move_old_aside()
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_marker(exp_dir, EXPERIMENT_KIND)
    write_text(exp_dir / RESOLVED_CONFIG, dump_config(config))
    return exp_dir


def resumed_config(config: ExperimentConfig) -> ExperimentConfig:
    """On resume, the experiment's own resolved config wins (so the same study and space are continued)."""
    saved = experiment_dir(config) / RESOLVED_CONFIG
    return load_resolved_config(saved.parent) if saved.is_file() else config


def preflight(config: ExperimentConfig, local: bool = True, echo: Callable[[str], None] = print) -> dict | None:
    """Everything that can be checked before Ray starts and before the experiment folder is touched.

    Checks the space and the data root, then the data: on a local search the dataset index and every image (by
    building the shared cache, see `warm_cache`); on a cluster only the index, when the dataset is reachable from
    the driver (each node decodes its own images on first use).

    Returns:
        What `warm_cache` returns on a local search (written to ``cache.json``), else None.

    Raises:
        UserError: the space, the CSVs or an image is bad (unreadable images only without ``skip_bad_images``).
    """
    from muratune.data.index import load_index
    from muratune.trainables.space import validate_space

    validate_space(config)
    if not config.data.root:
        raise UserError("data.root: no dataset given; set it in the config or pass --data ROOT")
    if local:
        return warm_cache(config)
    if Path(config.data.root).expanduser().exists():
        load_index(config.data.root)
    else:
        echo(f"note: {config.data.root} is not reachable from this machine; the cluster's nodes check the data")
    return None


def warm_cache(config: ExperimentConfig) -> dict:
    """Index the dataset and build the shared cache once on the driver, so trials only open it."""
    from muratune.data.cache import build_cache
    from muratune.data.index import load_index

    index = load_index(config.data.root)  # type: ignore[arg-type]  # preflight checked it is set
    cache = build_cache(
        index,
        config.data.image_size,
        config.data.resize_mode,
        cache_dir=config.data.cache_dir,
        skip_bad_images=config.data.skip_bad_images,
    )
    return {"cache": str(cache.path), "images": len(cache.index), "excluded": cache.excluded}


def record_cache(exp_dir: Path, cache_info: dict, echo: Callable[[str], None] = print) -> None:
    """Write ``cache.json`` (the cache used and the images it left out) and name the first left-out images."""
    write_json(exp_dir / CACHE_JSON, cache_info)
    excluded = cache_info["excluded"]
    for item in excluded[:SHOWN_EXCLUDED]:
        echo(f"excluded: {item['reason']}")
    if excluded:
        echo(f"{len(excluded)} unreadable image(s) left out of the search; all listed in {exp_dir / CACHE_JSON}")
