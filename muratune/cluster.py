"""The Ray connection shared by search, refit, serve and doctor: join a cluster or start a local Ray."""

from __future__ import annotations

import os


def ray_address(address: str | None) -> str | None:
    """The cluster to join: ``address`` when given, else ``RAY_ADDRESS``; None means a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray; return True if we started it.

    Args:
        address: a Ray address (``auto``, ``ray://host:10001``); default ``RAY_ADDRESS``, else a local Ray.
        num_cpus: CPUs of a local Ray started here (default: all).
    """
    import ray

    # The legacy console output honours our CLIReporter's columns; the new one prints every metric of every result.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return False
    address = ray_address(address)
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True
