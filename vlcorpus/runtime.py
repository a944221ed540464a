"""Starting or joining Ray: one call, the same under a local run, `--address` and `ray job submit`."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("vlcorpus.runtime")
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _token_auth_default_notice(record: logging.LogRecord) -> bool:
    """False for Ray's notice that a new local cluster has token authentication on by default (printed by every
    command): we want it on, so that no other local process can submit work to the embedded Ray. Any other message
    of that logger (token auth off, no token found) still shows."""
    return not record.getMessage().startswith("Token authentication is enabled")


SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's "no cluster" switch: read once, when `ray` is imported


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or `RAY_ADDRESS`, which `ray job submit` sets); else start an embedded local Ray.

    Workers import the installed project (`ray_cluster.yaml` installs it on every node), so no runtime_env is shipped.
    The embedded local Ray is bound to loopback: Ray's "no cluster" switch (read when `ray` is first imported, so
    set here before the import) makes it take 127.0.0.1 as the node's address, and its GCS, raylet, workers, agents
    and metrics listen there only, where they would listen on every interface.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    switch = not address and SWITCH not in os.environ
    if switch:
        os.environ[SWITCH] = "0"
    try:
        _init(address, num_cpus)
    finally:  # the switch must not reach processes started later (a `ray start` worker node would refuse to join)
        if switch:
            os.environ.pop(SWITCH)


def _init(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        if num_cpus is not None:
            raise ValueError("--num-cpus applies to a local Ray only; a cluster's size is set by the cluster")
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
    else:
        logging.getLogger(TOKEN_AUTH_LOGGER).addFilter(_token_auth_default_notice)
        # "local": a new embedded Ray even when /tmp/ray/ray_current_cluster names another (possibly dead) cluster
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        log.info("started a local Ray: %s", ray.cluster_resources())
