"""`build_*` functions: validated config in, bound Serve application out."""

from __future__ import annotations

from ray.serve import Application

from serve_apps.config import EngineConfig, ModelConfig, ServeConfig
from serve_apps.ingress import IngressSettings, OpenAIIngress
from serve_apps.supervisor import EngineSupervisor, replica_resources


def build_engine_app(model: ModelConfig, engine: EngineConfig, node_address: str | None = None) -> Application:
    """One checkpoint: `num_replicas` engine supervisors, each holding one engine's devices (all on the node at
    `node_address` when given)."""
    return EngineSupervisor.options(
        num_replicas=model.num_replicas,
        ray_actor_options=replica_resources(model, engine, node_address),
        max_ongoing_requests=engine.max_ongoing_requests,
        health_check_period_s=engine.health_check_period_s,
        health_check_timeout_s=engine.health_timeout_s * 2,
    ).bind(model, engine)


def ingress_settings(cfg: ServeConfig) -> IngressSettings:
    return IngressSettings(
        api_key=cfg.api_key.get_secret_value() if cfg.api_key else None,
        max_request_bytes=cfg.max_request_bytes,
    )


def build_ingress_app(cfg: ServeConfig) -> Application:
    return OpenAIIngress.options(num_replicas=cfg.ingress_replicas).bind(ingress_settings(cfg))
