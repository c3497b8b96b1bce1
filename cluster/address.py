"""Existing clusters: a running scheduler address or a Dask Gateway."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from distributed import Client, Worker
from distributed.diagnostics.plugin import WorkerPlugin

from cluster._optional import import_backend
from cluster.environment import CLOUD_READ_ENVIRONMENT
from cluster.profile import AddressProfile

logger = logging.getLogger(__name__)


class CloudReadEnvironment(WorkerPlugin):
    """Set the cloud-read environment in workers that were started elsewhere.

    GDAL and fsspec read these variables when a file is opened, so setting
    them in a running worker takes effect for later reads. Variables the
    worker already has are kept unless the profile overrides them; thread
    counts cannot change after start and are left alone.
    """

    name = "fleximo-cloud-read-environment"

    def __init__(self, overrides: Mapping[str, str]) -> None:
        self.overrides = dict(overrides)

    def setup(self, worker: Worker) -> None:
        """Apply the variables in the worker process."""
        for variable, value in CLOUD_READ_ENVIRONMENT.items():
            os.environ.setdefault(variable, value)
        os.environ.update(self.overrides)


def describe_address(profile: AddressProfile) -> str:
    """Describe what connecting with an ``address`` profile does."""
    if profile.address is not None:
        target = f"running scheduler at {profile.address}"
    else:
        gateway = profile.gateway
        cluster = gateway.cluster_name or f"a new cluster with {gateway.workers} workers"
        target = f"Dask Gateway at {gateway.address}, {cluster}"
    lines = [
        f"profile {profile.name!r} (kind address): connect to a {target}",
        "starts no workers; sets the cloud-read environment in each worker at connect",
        f"requires a GPU worker: {'yes' if profile.require_gpu else 'no'}",
    ]
    overrides = [f"  {name}={value}" for name, value in sorted(profile.environment.items())]
    if overrides:
        lines += ["environment overrides:", *overrides]
    return "\n".join(lines)


@contextlib.contextmanager
def connect_address(profile: AddressProfile) -> Iterator[Client]:
    """Connect a client to the scheduler or gateway cluster of the profile.

    A gateway cluster created here is shut down on exit; a named one is left
    running.

    Raises
    ------
    OSError
        If the scheduler cannot be reached within ``start_timeout_s``.
    MissingBackendError
        If the profile names a gateway and dask-gateway is not installed
        (extra ``gateway``).
    """
    with contextlib.ExitStack() as stack:
        if profile.address is not None:
            logger.info("connecting to the scheduler at %s", profile.address)
            client = stack.enter_context(Client(profile.address, timeout=profile.start_timeout_s))
        else:
            client = stack.enter_context(_connect_gateway(profile))

        client.register_plugin(CloudReadEnvironment(profile.environment))
        yield client


@contextlib.contextmanager
def _connect_gateway(profile: AddressProfile) -> Iterator[Client]:
    dask_gateway = import_backend("dask_gateway", "gateway", profile_kind="address")
    settings = profile.gateway

    with dask_gateway.Gateway(settings.address) as gateway:
        if settings.cluster_name is not None:
            logger.info("connecting to gateway cluster %s at %s", settings.cluster_name, settings.address)
            gateway_cluster = gateway.connect(settings.cluster_name)
            owned = False
        else:
            logger.info("creating a gateway cluster at %s", settings.address)
            gateway_cluster = gateway.new_cluster()
            gateway_cluster.scale(settings.workers)
            owned = True

        try:
            with gateway_cluster.get_client() as client:
                yield client
        finally:
            if owned:
                gateway_cluster.shutdown()
