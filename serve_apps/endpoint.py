"""The Python API of a running endpoint: start it, add and remove checkpoints at run time, list them."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ray
from ray import serve
from ray.serve.context import _get_global_client  # the only way to read a running Serve's HTTP port
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.errors import ClusterConnectionError, ConfigError, InfeasiblePlacementError
from cluster.planner import check_feasible, live_nodes, replica_needs
from cluster.watchdog import find_infeasible
from serve_apps.builder import build_engine_app, build_ingress_app, ingress_settings
from serve_apps.config import EngineConfig, ModelConfig, ServeConfig
from serve_apps.errors import EngineStartupError, ModelNotFoundError, WaitCancelled
from serve_apps.ingress import (
    ENGINE_APP_PREFIX,
    ENGINE_DEPLOYMENT,
    engine_app_name,
    joinable_settings,
    served_model,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INGRESS_APP = "evalcluster"


class Endpoint:
    """The shared OpenAI endpoint on the connected Ray cluster.

    >>> endpoint = Endpoint(serve_cfg).start()          # ingress + serve_cfg.models, waits until all answer
    >>> endpoint.add_models([ModelConfig(model="/ckpt/step_400")])
    >>> endpoint.served_models()                          # ['step_400', ...]
    >>> endpoint.remove_model("step_400")
    """

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.host = cfg.host
        self.port = cfg.port
        self._models: dict[str, ModelConfig] = {}  # what this Endpoint deployed: all `stop` removes
        self._started_serve = False  # Serve's controller and proxy were started by this Endpoint
        self._state_api = True  # until a look at Ray's state API fails

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Endpoint:
        """Start Serve's HTTP proxy and the ingress, or join the ones already running on this cluster, then deploy
        `cfg.models`. A running Serve keeps the address and proxy location it was started with: joining one that
        cannot be what the config asks for (another port, or HeadOnly when EveryNode is asked) is refused."""
        running = _get_global_client(raise_if_no_controller_running=False)
        if running is not None:
            _check_joinable(self.cfg, running.get_serve_details())
        else:
            # Checked where the proxy will bind (the head), which need not be this driver's host. Serve's proxy
            # would retry a taken port forever, and we would wait on it.
            self.port = on_head(_bindable_port, self.host, self.port)
            self._started_serve = True
        # No request_timeout_s: Serve's proxy applies it to the whole request, so it would cut a long answer that is
        # still streaming (and a cut stream is retried from scratch). Silence is bounded by the supervisor's read
        # timeout and by the clients' own idle and first-token bounds.
        serve.start(proxy_location=self.cfg.proxy_location,
                    http_options={"host": self.cfg.host, "port": self.port, "request_timeout_s": None})
        # A running Serve keeps its own HTTP options: the endpoint is wherever its proxy really listens.
        http = _get_global_client().http_config
        if (http.host, http.port) != (self.cfg.host, self.port):
            log.warning("joined the Serve instance already running at %s:%s", http.host, http.port)
        self.host, self.port = http.host, http.port
        if INGRESS_APP not in serve.status().applications:
            serve.run(build_ingress_app(self.cfg), name=INGRESS_APP, route_prefix="/")
        else:
            _warn_of_kept_settings(self.cfg)
        try:
            self.add_models(self.cfg.models)
        except BaseException:  # one checkpoint failed (or Ctrl-C): the ones already deployed must not linger
            self.stop()
            raise
        return self

    def add_models(
        self, models: Iterable[ModelConfig], *, engine: EngineConfig | None = None, wait: bool = True,
        node_address: str | None = None,
    ) -> None:
        """Deploy checkpoints (each its own Serve application) and, with `wait`, block until every one answers.

        Fails fast, before anything is deployed, when no node of the cluster could ever hold a replica (Serve
        itself would wait forever). `engine` overrides the endpoint's engine settings for these checkpoints;
        `node_address` puts their replicas on that node (a sweep's planner decides where devices go: left to
        itself, Ray may fragment the nodes so that a large replica fits nowhere).
        """
        models = list(models)
        if not models:
            return
        engine = engine or self.cfg.engine
        if engine.kind != "sim":  # the simulator reads no weights
            for m in models:
                if _is_path(m.model) and not Path(m.model).expanduser().is_dir():
                    raise ConfigError(f"model {m.name}: checkpoint directory {m.model} not found (every node that "
                                      "serves it must see this path)")
        nodes = live_nodes()
        for m in models:
            needs = replica_needs(engine.platform, m.tensor_parallel_size, engine.cpus_per_replica)
            check_feasible(m.name, needs, m.num_replicas, nodes)
        targets = [
            serve.RunTarget(build_engine_app(m, engine, node_address), name=engine_app_name(m.name), route_prefix=None)
            for m in models
        ]
        # Recorded before anything is deployed: an app that run_many started and then failed is still ours.
        self._models.update({m.name: m for m in models})
        serve.run_many(targets, wait_for_applications_running=False)
        if wait:
            self.wait_ready([m.name for m in models], timeout_s=engine.startup_timeout_s + 60)

    def wait_ready(self, names: list[str], timeout_s: float | None = None,
                   cancel: threading.Event | None = None) -> None:
        """Wait until each named checkpoint's app is RUNNING and the endpoint lists it; a failed deploy raises with
        the engine's own error (its last log lines). Setting `cancel` ends the wait within a second
        (`WaitCancelled`): a sweep being stopped does not wait out an engine's start."""
        deadline = time.monotonic() + (timeout_s or self.cfg.engine.startup_timeout_s + 60)
        pending = set(names)
        while pending:
            if cancel is not None and cancel.is_set():
                raise WaitCancelled(f"stopped while waiting for {sorted(pending)}")
            stuck = self._never_placeable(pending)
            if stuck:
                for name in pending:
                    self.remove_model(name)
                raise InfeasiblePlacementError("; ".join(stuck))
            apps = serve.status().applications
            for name in list(pending):
                app = apps.get(engine_app_name(name))
                if app is None:
                    raise ModelNotFoundError(f"checkpoint {name!r} is not deployed")
                if app.status == "DEPLOY_FAILED":
                    self.remove_model(name)
                    raise EngineStartupError(f"checkpoint {name!r} failed to deploy: {app.message}")
                if app.status == "RUNNING":
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise EngineStartupError(f"checkpoints {sorted(pending)} not ready before the startup timeout")
            if pending:
                time.sleep(1.0)
        self._wait_listed(names, deadline)

    def _never_placeable(self, names: set[str]) -> list[str]:
        """Messages for replicas of `names` that Ray accepted but can never place (Serve would wait out the whole
        startup timeout). Needs the state API: without a dashboard (the embedded Ray's default) there are none. Each
        look costs two state API calls, which is why it runs only while checkpoints are being waited for."""
        from ray.util.state.exception import RayStateApiException

        if not self._state_api:
            return []
        try:
            messages = find_infeasible(served_model)
        except (ClusterConnectionError, RayStateApiException):  # no dashboard: don't ask again
            self._state_api = False
            return []
        return [m for m in messages if any(m.startswith(f"model {name} ") for name in names)]

    def _wait_listed(self, names: list[str], deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.cfg.api_key.get_secret_value()}"} if self.cfg.api_key else {}
        on_head(_wait_listed, self.url, headers, names, deadline - time.monotonic())

    def remove_model(self, name: str) -> None:
        """Retire a checkpoint: its replicas stop and its engines are terminated."""
        self.remove_models([name])

    def remove_models(self, names: Iterable[str], timeout_s: float = 120.0) -> None:
        """Retire several checkpoints at once: Serve deletes them side by side instead of one after another."""
        names = list(names)
        self.start_removing(names)
        self.wait_removed(names, timeout_s)

    def start_removing(self, names: Iterable[str]) -> None:
        """Ask Serve to delete these checkpoints, without waiting for their replicas to stop (`wait_removed`)."""
        for app in {engine_app_name(n) for n in names}:
            serve.delete(app, _blocking=False)

    def wait_removed(self, names: Iterable[str], timeout_s: float = 120.0) -> None:
        """Until Serve has deleted these checkpoints (at most `timeout_s`). A replica on a host that was lost takes
        the deployment's whole graceful-shutdown timeout (serve_apps/supervisor.py) before Serve gives up on it."""
        names = list(names)
        apps = {engine_app_name(n) for n in names}
        deadline = time.monotonic() + timeout_s
        while apps & set(serve.status().applications) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in names:
            self._models.pop(name, None)

    def stop(self) -> None:
        """Remove what this Endpoint deployed, nothing else: on a shared cluster a sweep or another `serve` may be
        using the same Serve instance. The ingress goes once no checkpoint at all is served (the last one out);
        Serve itself is shut down only if this Endpoint started it and nothing else runs on it."""
        if _get_global_client(raise_if_no_controller_running=False) is None:
            return  # Serve never started (the start failed before it): nothing of ours can be running
        try:
            self.remove_models(list(self._models))
        except Exception as exc:  # a rerun retires what is left (Serve deletes are idempotent)
            log.warning("could not retire %s: %s", sorted(self._models), exc)
        if self.served_models():
            return
        apps = serve.status().applications
        if INGRESS_APP in apps:
            serve.delete(INGRESS_APP, _blocking=True)
        if self._started_serve and not (set(apps) - {INGRESS_APP}):
            serve.shutdown()

    @staticmethod
    def served_models() -> list[str]:
        """Checkpoints deployed on this cluster (any state but deleting)."""
        return sorted(
            name.removeprefix(ENGINE_APP_PREFIX)
            for name, app in serve.status().applications.items()
            if name.startswith(ENGINE_APP_PREFIX) and app.status != "DELETING"
        )

    def engine_info(self, name: str) -> dict:
        """Where one replica of checkpoint `name` runs its engine (url, pid, argv, key_file; never the key:
        `serve_apps.engine_process.engine_headers(info)` reads it from the file, on the engine's node)."""
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, engine_app_name(name))
        return handle.engine_info.remote().result()

    def shutdown(self) -> None:
        """Shut Serve down with every application on it (whoever deployed them): for a Serve of one's own only."""
        serve.shutdown()


def _check_joinable(cfg: ServeConfig, running: dict[str, Any]) -> None:
    """Refuse a config the running Serve cannot honour: it would be joined silently, and the endpoint would not be
    where the config says (Serve keeps the HTTP options and proxy location it was started with)."""
    http = running.get("http_options") or {}
    location = getattr(running.get("proxy_location"), "value", running.get("proxy_location"))  # an enum, or its name
    asked = []
    if cfg.port not in (0, http.get("port")):
        asked.append(f"serve.port {cfg.port}")
    if cfg.proxy_location == "EveryNode" and location != "EveryNode":
        asked.append("serve.proxy_location EveryNode")
    if asked:
        raise ConfigError(
            f"Serve already runs on this cluster at {http.get('host')}:{http.get('port')} (proxy_location "
            f"{location}) and keeps those settings; this config asks for {' and '.join(asked)}. Join it with "
            f"serve.port {http.get('port')} (or 0: wherever it runs), or stop it first (`serve shutdown -a "
            "DASHBOARD_URL`: every application on it goes)")


def _warn_of_kept_settings(cfg: ServeConfig) -> None:
    """Joining a running ingress keeps its key and body limit; say so where they differ from this config's."""
    kept = serve.get_app_handle(INGRESS_APP).joined_settings.remote().result(timeout_s=60)
    asked = joinable_settings(ingress_settings(cfg))
    differ = [name for name in asked if asked[name] != kept.get(name)]
    if differ:
        log.warning("joined the ingress already running on this cluster: it keeps its own %s (this config's are "
                    "not applied; `serve shutdown` first to apply them)", " and ".join(differ))


def on_head(fn: Callable[..., T], *args: Any, timeout_s: float = 600.0) -> T:
    """`fn(*args)` run on the head node, where Serve's proxy listens (proxy_location HeadOnly), and where a
    loopback endpoint address means what it says: the driver may be on another host."""
    head = next((n for n in live_nodes() if n.is_head), None)
    if head is None:
        raise EngineStartupError("the Ray cluster reports no head node")
    on_node = NodeAffinitySchedulingStrategy(node_id=head.node_id, soft=False)
    task = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=on_node)(fn)
    return ray.get(task.remote(*args), timeout=timeout_s)


def _bindable_port(host: str, port: int) -> int:
    """`port` if a server can bind it on `host` (a port left in TIME_WAIT can, one with a listener can't); for
    port 0, a free one."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"serve.port = {port}: {host}:{port} is not free ({exc.strerror}); "
                              "choose another port, or 0 for any free one") from None
        return int(probe.getsockname()[1])


def _wait_listed(url: str, headers: dict[str, str], names: list[str], timeout_s: float) -> None:
    """Until the endpoint at `url` lists every name in /v1/models (Serve's proxy learns new routes a moment after
    an app is RUNNING)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers=headers, timeout=10.0, trust_env=False) as client:
        while True:
            try:
                listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
                if set(names) <= listed:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise EngineStartupError(f"endpoint {url} does not list {sorted(names)}")
            time.sleep(0.5)


def _is_path(model: str) -> bool:
    """A local path rather than a hub id ("org/name", which vLLM would download): absolute, ./, ../ or ~."""
    return model.startswith(("/", "./", "../", "~"))
