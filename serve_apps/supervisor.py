"""The engine supervisor: a Ray Serve replica that holds one engine's devices and runs the engine as its child."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ray
from ray import serve

from cluster.planner import replica_needs
from cluster.secrets import redact_argv
from serve_apps.checkpoint_id import checkpoint_identity
from serve_apps.config import EngineConfig, ModelConfig
from serve_apps.engine_process import launch_engine
from serve_apps.errors import EngineUnavailableError

log = logging.getLogger("ray.serve")

NODE_PIN = 0.001  # of a node's `node:<address>` resource (1.0): any number of replicas fit, only there


def replica_resources(model: ModelConfig, engine: EngineConfig, node_address: str | None = None) -> dict[str, Any]:
    """Ray actor options for one replica: the planner's `replica_needs` (every device of its engine, on one node,
    as an actor never spans nodes) spelled as Ray wants them. On ascend Ray sets ASCEND_RT_VISIBLE_DEVICES for the
    replica; the engine child inherits it. `node_address` pins the replica to that node (through the
    `node:<address>` resource every Ray node has), for a caller that planned where its devices go."""
    needs = dict(replica_needs(engine.platform, model.tensor_parallel_size, engine.cpus_per_replica).resources)
    if node_address:
        needs[f"node:{node_address}"] = NODE_PIN
    options: dict[str, Any] = {"num_cpus": needs.pop("CPU", 0.0)}
    if "GPU" in needs:
        options["num_gpus"] = needs.pop("GPU")
    if needs:
        options["resources"] = needs
    return options


# A retired checkpoint has nothing in flight: check for that often (Serve's default is every 2 s), so its devices
# go to the next checkpoint of a sweep sooner.
@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1024, graceful_shutdown_timeout_s=20,
                  graceful_shutdown_wait_loop_s=0.5)
class EngineSupervisor:
    """Starts the engine in its constructor, forwards request bodies to it, and streams its answers back unchanged."""

    def __init__(self, model: ModelConfig, engine: EngineConfig):
        self._model = model
        self._engine_cfg = engine
        self._engine = launch_engine(model, engine, cpus=engine.cpus_per_replica)
        # No pool limit: the engine does its own queueing, and the replica's max_ongoing_requests bounds us already.
        # The engine's key on every request, health probes included (/health is open, but one client, one rule);
        # no proxy from the environment: none may see the key. httpx's read timeout applies per read: it ends a
        # silent engine's answer, never one still streaming.
        self._client = httpx.AsyncClient(
            base_url=self._engine.base_url,
            headers=self._engine.headers,
            timeout=httpx.Timeout(engine.read_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            trust_env=False,
        )
        # Once, at start: the files this replica's engine loaded (evaluation records carry it; see checkpoint_id).
        self._identity = checkpoint_identity(model.model)
        log.info("engine for %s ready at %s (pid %s)", model.name, self._engine.base_url, self._engine.proc.pid)

    async def forward(self, method: str, path: str, body: bytes | None = None) -> AsyncIterator[dict | bytes]:
        """Yield {'status', 'content_type', 'body'} first, then the rest of the engine's response bytes as they
        arrive. `body` is the whole answer when it is not a stream, else the stream's first bytes: every message
        through Ray costs the host a few milliseconds, so the head never travels alone."""
        request = self._client.build_request(
            method, path, content=body, headers={"content-type": "application/json"} if body else None
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise EngineUnavailableError(
                f"engine for {self._model.name!r} is unreachable ({type(exc).__name__}); it is being restarted"
            ) from None
        try:
            content_type = response.headers.get("content-type", "")
            head = {"status": response.status_code, "content_type": content_type}
            if "text/event-stream" not in content_type:
                yield {**head, "body": await response.aread()}
                return
            chunks = response.aiter_raw()
            yield {**head, "body": await anext(chunks, b"")}
            async for chunk in chunks:
                yield chunk
        finally:
            await response.aclose()

    async def check_health(self) -> None:
        """Serve's health check: a dead or unresponsive engine fails it, and Serve replaces this replica."""
        if not self._engine.alive():
            raise RuntimeError(f"engine process for {self._model.name!r} exited:\n{self._engine.log_tail(10)}")
        response = await self._client.get("/health", timeout=self._engine_cfg.health_timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"engine for {self._model.name!r} answered /health with {response.status_code}")

    def checkpoint_identity(self) -> str:
        """What this replica serves, as files (path, weight files' sizes and times) — not just its served name."""
        return self._identity

    def engine_info(self) -> dict[str, Any]:
        """Where the engine listens (on its node's loopback), its pid, argv and node, and the 0600 file on its node
        that holds its key, for operators and tests that talk to it directly. Never the key: any Serve handle could
        read this."""
        context = ray.get_runtime_context()
        return {"url": self._engine.base_url, "pid": self._engine.proc.pid,
                "argv": redact_argv(self._engine.argv), "key_file": str(self._engine.key_file),
                "node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}

    def __del__(self) -> None:
        # Serve calls __del__ on graceful replica shutdown; a crash is covered by the child's parent-death signal.
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.stop()
