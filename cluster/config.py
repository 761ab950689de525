"""The `cluster:` config section: which Ray to use and how to reach it."""

from __future__ import annotations

from pydantic import Field

from cluster.configfile import StrictModel


class ClusterConfig(StrictModel):
    """Where things run. Without `address`, an embedded single-node Ray on loopback is started and stopped with us."""

    address: str | None = Field(
        None, description="Ray cluster to join ('auto', or 'HOST:PORT' of the GCS). None: start an embedded local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="Embedded Ray only: CPUs to declare (default: all cores).")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Embedded Ray only: extra node resources, e.g. {NPU: 8}."
    )
    include_dashboard: bool = Field(
        False, description="Embedded Ray only: start the dashboard (needed for `ray job submit`; ~200 MB)."
    )
    node_ip_address: str | None = Field(
        None, description="Joining only: this machine's address as the cluster knows it. Needed on a machine that "
        "hosts simulated nodes, whose driver sits on the head's loopback address (127.0.0.2).",
    )
    namespace: str = Field("evalcluster", description="Ray namespace of evalcluster's named actors and apps.")
