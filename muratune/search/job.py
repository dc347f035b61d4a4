"""Running a Tune job from the driver: Ray up (and its resources checked) for the job, SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from muratune.cluster import connect_ray
from muratune.config import ExperimentConfig
from muratune.search.resources import check_cluster_resources


class SigtermAsSigint:
    """Treat SIGTERM like Ctrl-C while a Tune job runs, so Tune saves a restorable state before exiting."""

    def __enter__(self) -> SigtermAsSigint:
        self.previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)


@contextmanager
def ray_for_job(
    config: ExperimentConfig, address: str | None, num_cpus: int | None, echo: Callable[[str], None] = print
) -> Iterator[bool]:
    """Connect to Ray (or start a local Ray), check that the job's trials fit the cluster, and shut down a Ray
    started here when the block ends.

    Yields:
        Whether Ray was started here (a local Ray, not an autoscaling cluster).
    """
    import ray

    started = connect_ray(address, num_cpus)
    try:
        check_cluster_resources(config, autoscaling=not started, echo=echo)
        yield started
    finally:
        if started:
            ray.shutdown()


def fit_job(tuner: Any) -> Any:
    """Run a Tuner to its end (or until interrupted by Ctrl-C or SIGTERM, leaving it restorable); its results."""
    with SigtermAsSigint():
        return tuner.fit()
