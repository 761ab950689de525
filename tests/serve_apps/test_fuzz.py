"""Generated bad input against the real endpoint: every answer is a 4xx with an OpenAI-style error body, or a
success; nothing makes the ingress fail (5xx) and the endpoint stays up. And straight at an engine behind it,
without its key: every request but /health is refused (401), whatever the path, method, body or header."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_apps.engine_process import engine_headers
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


# Paths: the engine's real routes (a generating one vLLM's own key check misses among them), near misses of the
# one open path, and generated ones, percent-encoding included (the server decodes it before routing).
KNOWN_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/invocations", "/tokenize", "/detokenize",
               "/metrics", "/generative_scoring", "/scale_elastic_ep", "/inference/v1/generate", "/v1/responses",
               "/health/", "//health", "/Health", "/%68ealth", "/health/../v1/models", "/v1/../invocations"]
path_chars = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#")
engine_paths = st.sampled_from(KNOWN_PATHS) | st.text(path_chars, max_size=40).map(lambda t: "/" + t)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
# Stripped: h11 refuses to send a header value with spaces at either end.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)
KEY_MUTATIONS = ["drop_last", "append", "upper", "flip_first", "no_scheme", "basic", "lowercase_scheme_extra_char"]


def wrong_header(kind: str, key: str) -> str | None:
    """A header that is not `Bearer <key>`, built from the real key so that it is close to right."""
    return {"drop_last": f"Bearer {key[:-1]}", "append": f"Bearer {key}=", "upper": f"Bearer {key.swapcase()}",
            "flip_first": f"Bearer {'A' if key[0] != 'A' else 'B'}{key[1:]}", "no_scheme": key,
            "basic": f"Basic {key}", "lowercase_scheme_extra_char": f"bearer {key}0"}[kind]


def fuzz_engine(endpoint, examples: int) -> None:
    info = endpoint.engine_info("tiny-a")
    key = engine_headers(info)["Authorization"].removeprefix("Bearer ")
    seen: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(path=engine_paths, method=methods, payload=raw_payloads,
           header=st.none() | header_text | st.sampled_from(KEY_MUTATIONS))
    def one(path: str, method: str, payload: bytes, header: str | None) -> None:
        if header in KEY_MUTATIONS:
            header = wrong_header(header, key)
        headers = {"content-type": "application/json"} | ({"Authorization": header} if header is not None else {})
        response = httpx.request(method, info["url"] + path, content=payload, headers=headers, timeout=60,
                                 trust_env=False)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        sent_path = response.request.url.raw_path.decode().partition("?")[0]
        if urllib.parse.unquote(sent_path) == "/health":  # what the server routes on, once it has decoded it
            return  # the one open route (Serve's health probe)
        assert response.status_code == 401, (method, path, header, response.text[:200])

    one()
    assert seen.get(401, 0) >= examples * 0.9
    assert httpx.get(info["url"] + "/health").status_code == 200
    answer = httpx.post(endpoint.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                        json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                        timeout=120)
    assert answer.status_code == 200, answer.text  # the endpoint, which holds the key, still answers


def test_fuzz_engine_without_its_key_quick(endpoint):
    fuzz_engine(endpoint, 200)


@pytest.mark.faults
def test_fuzz_engine_without_its_key_1000_requests(endpoint):
    fuzz_engine(endpoint, 1000)
