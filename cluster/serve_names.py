"""How Ray Serve names what it starts, read back by the watchdog and `cluster status`.

Serve names replica actors and their placement groups `SERVE_REPLICA::<app>#<deployment>#<id>`, and replica
actor classes `ServeReplica:<app>:<deployment>` (Ray Serve's naming). Which deployments serve which model is
the serving layer's business: it is passed in as a `ModelOf`, so cluster/ knows nothing of serve_apps' names.
"""

from __future__ import annotations

from collections.abc import Callable

SERVE_REPLICA_PREFIX = "SERVE_REPLICA::"
REPLICA_CLASS_PREFIX = "ServeReplica:"
# (Serve app, deployment) → the model it serves; None: not a model's.
ModelOf = Callable[[str, str], "str | None"]


def split_replica_class_name(class_name: str) -> tuple[str, str] | None:
    """`ServeReplica:<app>:<deployment>` → (app, deployment); app names may themselves contain ':'."""
    if not class_name.startswith(REPLICA_CLASS_PREFIX):
        return None
    app, _, deployment = class_name.removeprefix(REPLICA_CLASS_PREFIX).rpartition(":")
    return app, deployment


def split_replica_name(name: str) -> tuple[str, str] | None:
    """`SERVE_REPLICA::<app>#<deployment>#<id>` (an actor or its placement group) → (app, deployment), app ""
    when Serve leaves it out; None if `name` is not a Serve replica's."""
    if not name.startswith(SERVE_REPLICA_PREFIX):
        return None
    parts = name[len(SERVE_REPLICA_PREFIX) :].split("#")
    return (parts[0], parts[1]) if len(parts) >= 3 else ("", parts[0])
