"""Generated bad input against the real endpoint: every answer is a 4xx with an OpenAI-style error body, or a
success; nothing makes the ingress fail (5xx) and the endpoint stays up."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import API_KEY

pytestmark = pytest.mark.engine

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/models"]
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                           "content": st.text(max_size=200) | json_values}), max_size=3)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny-a", "tiny-b"]) | st.text(max_size=30) | json_values,
        "messages": messages | json_values,
        "prompt": st.text(max_size=200) | json_values,
        "max_tokens": st.integers(min_value=-5, max_value=4) | json_values,
        "temperature": st.floats(min_value=-1, max_value=3, allow_nan=False) | json_values,
        "stream": st.booleans() | json_values,
        "n": st.integers(min_value=-1, max_value=2),
    },
)
deep_json = st.integers(min_value=100, max_value=5000).map(lambda depth: "[" * depth + "]" * depth)
raw_payloads = (
    bodies.map(lambda b: json.dumps(b).encode())
    | st.binary(max_size=300)  # invalid UTF-8 and JSON included
    | deep_json.map(str.encode)
    | st.integers(min_value=1, max_value=70_000).map(lambda n: json.dumps({"model": "tiny-a", "prompt": "x" * n}).encode())
)
content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""])


def fuzz(endpoint, examples: int) -> None:
    seen: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(route=st.sampled_from(ROUTES), payload=raw_payloads, content_type=content_types)
    def one(route: str, payload: bytes, content_type: str) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"} | ({"content-type": content_type} if content_type else {})
        method = "GET" if route == "/v1/models" else "POST"
        response = httpx.request(method, endpoint.url + route, content=payload, headers=headers, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and "type" in error
        elif "text/event-stream" not in response.headers.get("content-type", ""):
            response.json()  # a success is a JSON document

    one()
    assert sum(seen.values()) >= examples
    assert httpx.get(endpoint.url + "/health").status_code == 200


def test_fuzz_ingress_quick(endpoint):
    fuzz(endpoint, 200)


@pytest.mark.faults
def test_fuzz_ingress_1000_requests(endpoint):
    fuzz(endpoint, 1000)
