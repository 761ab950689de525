"""Fingerprints: what produced a stored answer, so that a rerun re-sends exactly the samples whose inputs changed.

    identity = checkpoint_identities({"step_400": "serve:engine:step_400"}, api_key=None)["step_400"]
    fp = sample_fingerprint(body, row, identity)    # stored in the record; compared on the next run

A fingerprint hashes three things: the request body as sent (messages, max_tokens, sampling parameters, seed,
extra_body), the dataset row with its reference answer (a changed data file changes it even where the rendered
prompt does not), and the checkpoint's identity as the engine serves it. The served name alone is not enough: a
rerun after retraining `step_400` in place, or after "512 truncated my reasoning, run again with 32768", must not
keep the old answers. Fields that change how an answer travels and not what it says are left out (`stream`,
`stream_options`, `stream_interval`), as is the endpoint's address.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import httpx

from eval_jobs.client import SERVE_SCHEME

log = logging.getLogger(__name__)

TRANSPORT_FIELDS = ("stream", "stream_options", "stream_interval")


def digest(value: Any) -> str:
    """A short, stable hash of JSON-like data (keys sorted; anything JSON cannot hold by its repr)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def sample_fingerprint(body: dict[str, Any], row: Any, checkpoint: str) -> str:
    answer_fields = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    return digest({"body": answer_fields, "row": row, "checkpoint": checkpoint})


def checkpoint_identities(endpoints: dict[str, str], api_key: str | None) -> dict[str, str]:
    """model → its identity: from its engine supervisor when this cluster serves it (the weight files it loaded),
    else from the endpoint's model card (what an outside server shows: its path and context length)."""
    lists = ModelLists(api_key)
    return {model: _identity(model, endpoint, lists) for model, endpoint in endpoints.items()}


def _identity(model: str, endpoint: str, lists: ModelLists) -> str:
    app = endpoint.removeprefix(SERVE_SCHEME) if endpoint.startswith(SERVE_SCHEME) else _own_app(model)
    if app is not None:
        from ray import serve

        from serve_apps.ingress import ENGINE_DEPLOYMENT

        return serve.get_deployment_handle(ENGINE_DEPLOYMENT, app).checkpoint_identity.remote().result()
    return _card_identity(model, endpoint, lists)


def _own_app(model: str) -> str | None:
    """The Serve application serving `model` on this cluster, if any (an HTTP run against its own endpoint)."""
    try:
        from ray.serve.context import _get_global_client

        from serve_apps.ingress import engine_app_name

        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # no Ray session: an outside endpoint
        return None
    if client is None:
        return None
    from ray import serve

    app = engine_app_name(model)
    return app if app in serve.status().applications else None


STABLE_CARD_FIELDS = ("id", "root", "parent", "max_model_len", "owned_by")


def models_url(endpoint: str) -> str:
    """An OpenAI-compatible server's model list, from its base URL with or without /v1."""
    return endpoint.rstrip("/").removesuffix("/v1") + "/v1/models"


def model_cards(endpoint: str, api_key: str | None) -> list[Any]:
    """The model cards the server at `endpoint` lists (raises httpx.HTTPError, or ValueError / KeyError for an
    answer that is not a model list)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(models_url(endpoint), headers=headers, timeout=30.0, trust_env=False)
    response.raise_for_status()
    return response.json()["data"]


class ModelLists:
    """Each outside server's model list, asked for once however many of its models a step needs a card of (a
    failed listing is remembered too: a server that does not answer costs one timeout, not one per model)."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._lists: dict[str, list[Any] | Exception] = {}

    def card(self, model: str, endpoint: str) -> dict[str, Any]:
        """`model`'s card at `endpoint` (raises as model_cards does, or LookupError when it is not listed)."""
        if endpoint not in self._lists:
            try:
                self._lists[endpoint] = model_cards(endpoint, self.api_key)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self._lists[endpoint] = exc
        listed = self._lists[endpoint]
        if isinstance(listed, Exception):
            raise listed
        card = next((c for c in listed if isinstance(c, dict) and c.get("id") == model), None)
        if card is None:
            raise LookupError(f"{model!r} is not listed")
        return card


def _card_identity(model: str, endpoint: str, lists: ModelLists) -> str:
    """An outside server's model card, its fields that describe the model. It cannot show the weights: a
    server restarted on other weights under the same path looks the same (the README says so)."""
    try:
        card = lists.card(model, endpoint)
    except (httpx.HTTPError, ValueError, KeyError, TypeError, LookupError) as exc:
        log.warning("%s: no model card at %s (%s); its identity is its name only", model, models_url(endpoint), exc)
        return f"name:{model}"
    # Only what describes the model: vLLM's card also carries `created` and a `permission` entry whose id is
    # random per listing, which made every rerun against an outside server look like new weights.
    return "card:" + digest({k: card.get(k) for k in STABLE_CARD_FIELDS})
