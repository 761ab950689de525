"""The engines behind the endpoint answer only their supervisor: a real vLLM CPU engine, asked directly on every
route it has, refuses a request without its key; the endpoint keeps answering."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from serve_apps.engine_process import engine_headers

pytestmark = pytest.mark.engine

CHAT = {"model": "tiny-a", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
BAD_HEADERS = [None, "Bearer wrong-key", "Bearer", "Basic {key}", "Bearer {key}x", "bearer{key}"]


def engine_routes(info: dict) -> list[tuple[str, str]]:
    """Every (method, path) the engine's API server has, from its own OpenAPI document: routes a future vLLM adds
    are covered too. Path parameters get a placeholder."""
    spec = httpx.get(info["url"] + "/openapi.json", headers=engine_headers(info), timeout=30).json()
    routes = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
              for path, methods in spec["paths"].items() for method in methods]
    return routes + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/no-such-route")]


def test_an_engine_refuses_every_request_without_its_key_but_health(endpoint, auth):
    info = endpoint.engine_info("tiny-a")
    key = engine_headers(info)["Authorization"].removeprefix("Bearer ")
    routes = engine_routes(info)
    assert ("POST", "/invocations") in routes  # vLLM's own key check does not cover this one
    with httpx.Client(base_url=info["url"], timeout=60, trust_env=False) as engine:
        for method, path in routes:
            for header in BAD_HEADERS:
                headers = {"Authorization": header.format(key=key)} if header else {}
                answer = engine.request(method, path, json=CHAT, headers=headers)
                if path == "/health":
                    assert answer.status_code == 200  # Serve's probe: open, as on vLLM
                    continue
                assert answer.status_code == 401, (method, path, header, answer.text[:200])
                assert answer.json()["error"]["type"] == "authentication_error"
        # The same routes answer with the key: the 401s were the key, not a broken route.
        keyed = engine_headers(info)
        assert engine.post("/invocations", json=CHAT, headers=keyed).json()["choices"][0]["message"]["content"]
        assert engine.get("/v1/models", headers=keyed).json()["data"][0]["id"] == "tiny-a"
        assert "vllm:request_success_total" in engine.get("/metrics", headers=keyed).text
    # The endpoint, which holds the key, still answers.
    through = httpx.post(f"{endpoint.url}/v1/chat/completions", json=CHAT, headers=auth, timeout=120)
    assert through.status_code == 200, through.text


def test_each_engine_has_its_own_key_kept_out_of_argv_and_engine_info(endpoint):
    infos = {name: endpoint.engine_info(name) for name in ("tiny-a", "tiny-b")}
    keys = {name: engine_headers(info)["Authorization"] for name, info in infos.items()}
    assert keys["tiny-a"] != keys["tiny-b"]
    for name, info in infos.items():
        key = keys[name].removeprefix("Bearer ")
        assert key not in json.dumps(info)
        key_file = Path(info["key_file"])
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == info["pid"]]
        assert len(group) >= 3  # guard, API server, engine core
        for pid in group:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert key.encode() not in f.read(), f"engine key in the argv of pid {pid}"
        # Each engine rejects the other's key: a key opens one engine only.
        other = keys["tiny-b" if name == "tiny-a" else "tiny-a"]
        assert httpx.get(info["url"] + "/v1/models", headers={"Authorization": other}).status_code == 401


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
