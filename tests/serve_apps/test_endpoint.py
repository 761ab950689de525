"""The shared endpoint against real parts: local Ray Serve, two real vLLM CPU engines (tiny-qwen2), real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import openai
import pytest
from ray import serve

from shared import API_KEY, MAX_MODEL_LEN, MAX_REQUEST_BYTES, tiny_models
from serve_apps.config import EngineConfig, ModelConfig
from serve_apps.engine_process import engine_headers
from serve_apps.ingress import engine_app_name

pytestmark = pytest.mark.engine

CHAT = {"messages": [{"role": "user", "content": "Count from one to ten."}], "max_tokens": 12, "temperature": 0}
V1_ROUTES = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]


@pytest.fixture
def client(endpoint, auth):
    with httpx.Client(base_url=endpoint.url, headers=auth, timeout=120, trust_env=False) as c:
        yield c


def test_joining_the_running_serve_with_other_http_settings_is_refused(endpoint, caplog):
    """Serve keeps the port and proxy location it was started with: a config asking for others is refused, naming
    both, instead of being joined at an address it does not name. Port 0 joins wherever Serve runs; the running
    ingress keeps its key and body limit, and a join that asks for others is told which."""
    from cluster.errors import ConfigError
    from serve_apps.config import ServeConfig
    from serve_apps.endpoint import Endpoint

    taken = endpoint.port
    for asked, named in ((dict(port=taken + 1), f"serve.port {taken + 1}"),
                         (dict(port=0, proxy_location="EveryNode"), "serve.proxy_location EveryNode")):
        with pytest.raises(ConfigError) as refused:
            Endpoint(ServeConfig(api_key=API_KEY, **asked)).start()
        assert named in str(refused.value) and f"127.0.0.1:{taken} (proxy_location HeadOnly)" in str(refused.value)
    with caplog.at_level("WARNING", logger="serve_apps.endpoint"):
        same = Endpoint(ServeConfig(port=0, api_key=API_KEY, max_request_bytes=MAX_REQUEST_BYTES)).start()
        assert same.url == endpoint.url and "keeps its own" not in caplog.text
        # No models: nothing of its own to deploy. Its key and body limit are not the running ingress's.
        joined = Endpoint(ServeConfig(port=0, api_key="another-key")).start()
    assert joined.url == endpoint.url
    [kept] = [r.getMessage() for r in caplog.records if "keeps its own" in r.getMessage()]
    assert "serve.max_request_bytes and serve.api_key" in kept and "another-key" not in kept


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    return error


def test_models_lists_both_checkpoints_with_engine_cards(client):
    cards = client.get("/v1/models").json()["data"]
    assert sorted(c["id"] for c in cards) == ["tiny-a", "tiny-b"]
    assert all(c["max_model_len"] == MAX_MODEL_LEN for c in cards)  # vLLM's own model card, passed through


def test_greedy_chat_equals_the_engine_called_directly(client, endpoint):
    through_endpoint = client.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
    assert through_endpoint.status_code == 200, through_endpoint.text
    info = endpoint.engine_info("tiny-a")
    direct = httpx.post(f"{info['url']}/v1/chat/completions", json={**CHAT, "model": "tiny-a"},
                        headers=engine_headers(info), timeout=120)
    ours, theirs = through_endpoint.json(), direct.json()
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
    assert ours["usage"]["completion_tokens"] == theirs["usage"]["completion_tokens"] > 0


def test_requests_are_routed_by_model(client, endpoint):
    pids = {name: endpoint.engine_info(name)["pid"] for name in ("tiny-a", "tiny-b")}
    assert pids["tiny-a"] != pids["tiny-b"]
    for name in ("tiny-a", "tiny-b"):
        answer = client.post("/v1/chat/completions", json={**CHAT, "model": name}).json()
        assert answer["model"] == name


def test_chat_stream_arrives_incrementally_and_ends_with_done(endpoint, auth):
    # Enough tokens that even a fast CPU takes well over 50 ms to generate them (24 once came in 29 ms).
    body = {**CHAT, "model": "tiny-b", "stream": True, "max_tokens": 256, "ignore_eos": True}
    arrivals: list[tuple[float, str]] = []
    with httpx.stream("POST", f"{endpoint.url}/v1/chat/completions", json=body, headers=auth, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.perf_counter(), line[5:].strip()))
    assert arrivals[-1][1] == "[DONE]"
    tokens = [json.loads(d)["choices"][0]["delta"].get("content") for _, d in arrivals[:-1]
              if json.loads(d)["choices"]]
    assert sum(1 for t in tokens if t) >= 20
    # Incremental: the events did not all arrive in one burst at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 0.05


def test_a_client_timeout_header_does_not_cut_the_stream(endpoint, auth):
    """Serve's proxy would end the request after `x-request-timeout-seconds` (a total deadline); the endpoint has
    none on purpose, so the header is removed before the proxy reads it (serve_apps/proxy_headers.py)."""
    body = {**CHAT, "model": "tiny-b", "stream": True, "max_tokens": 256, "ignore_eos": True, "stream_interval": 1}
    headers = {**auth, "x-request-timeout-seconds": "0.05"}
    started = time.perf_counter()
    events = []
    with httpx.stream("POST", f"{endpoint.url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    took = time.perf_counter() - started
    assert took > 0.05  # longer than the header asked for: the proxy would have cut it
    assert events[-1] == "[DONE]"
    usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    assert not usage or usage[-1]["completion_tokens"] == 256
    tokens = [c for e in events[:-1] for c in json.loads(e).get("choices", []) if c["delta"].get("content")]
    assert len(tokens) >= 200


def test_stream_interval_reaches_vllm_and_groups_tokens(endpoint, auth):
    # What evaluation requests ask for (eval.generation.stream_interval): vLLM sends the first token alone, then
    # a chunk per 8 tokens, the rest with the finish reason, so every hop back to the client carries 4 messages.
    body = {**CHAT, "model": "tiny-b", "stream": True, "max_tokens": 20, "ignore_eos": True, "stream_interval": 8,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{endpoint.url}/v1/chat/completions", json=body, headers=auth, timeout=120) as r:
        assert r.status_code == 200
        events = [json.loads(line[5:]) for line in r.iter_lines()
                  if line.startswith("data:") and not line.endswith("[DONE]")]
    content_chunks = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == 4
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 20


def test_completions_route_streaming_and_not(client, endpoint, auth):
    plain = client.post("/v1/completions", json={"model": "tiny-a", "prompt": "Hello", "max_tokens": 5,
                                                 "temperature": 0})
    assert plain.status_code == 200 and plain.json()["object"] == "text_completion"
    body = {"model": "tiny-a", "prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{endpoint.url}/v1/completions", json=body, headers=auth, timeout=120) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3


def test_official_openai_client(endpoint):
    oai = openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key=API_KEY, max_retries=0)
    assert {m.id for m in oai.models.list()} == {"tiny-a", "tiny-b"}
    answer = oai.chat.completions.create(model="tiny-a", **CHAT)
    assert answer.choices[0].message.content
    stream = oai.chat.completions.create(model="tiny-a", stream=True, **CHAT)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer.choices[0].message.content


def test_unknown_model_is_404(client):
    error = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}), 404)
    assert "nope" in error["message"] and "tiny-a" in error["message"]


def test_malformed_json_and_missing_model_are_400(client):
    assert_openai_error(client.post("/v1/chat/completions", content=b"{not json"), 400)
    assert_openai_error(client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert "model" in assert_openai_error(client.post("/v1/chat/completions", json=CHAT), 400)["message"]


def test_body_over_the_limit_is_413(client):
    big = {**CHAT, "model": "tiny-a", "messages": [{"role": "user", "content": "x" * MAX_REQUEST_BYTES}]}
    assert_openai_error(client.post("/v1/chat/completions", json=big), 413)


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {API_KEY}"])
def test_missing_or_wrong_api_key_is_401_on_every_v1_route(endpoint, method, path, header):
    headers = {"Authorization": header} if header else {}
    response = httpx.request(method, f"{endpoint.url}{path}", json={**CHAT, "model": "tiny-a"}, headers=headers)
    assert_openai_error(response, 401)


def test_engine_errors_pass_through_with_the_engine_status_and_message(client):
    too_long = {**CHAT, "model": "tiny-a", "messages": [{"role": "user", "content": "hi " * (2 * MAX_MODEL_LEN)}]}
    error = assert_openai_error(client.post("/v1/chat/completions", json=too_long), 400)
    assert str(MAX_MODEL_LEN) in error["message"]  # vLLM's own wording about the context length


def test_health_and_metrics(client):
    assert client.get("/health").status_code == 200
    client.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
    metrics = client.get("/metrics").text
    assert 'evalcluster_requests_total{model="tiny-a",route="/v1/chat/completions",status="200"}' in metrics


def test_add_and_remove_a_checkpoint_at_run_time(endpoint, client, tiny_model):
    endpoint.add_models(tiny_models(tiny_model, "tiny-c"))
    try:
        assert "tiny-c" in endpoint.served_models()
        assert client.post("/v1/chat/completions", json={**CHAT, "model": "tiny-c"}).status_code == 200
    finally:
        endpoint.remove_model("tiny-c")
    assert "tiny-c" not in endpoint.served_models()
    assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "model": "tiny-c"}), 404)


def test_ascend_replica_holds_npus_and_its_engine_sees_them(endpoint, client):
    """The ascend path up to the engine: the {"NPU": tp} reservation, Ray's ASCEND_RT_VISIBLE_DEVICES and
    VLLM_MS_MODEL_BACKEND reaching the child. The child is the simulator: no vllm_mindspore on this machine."""
    engine = EngineConfig(kind="sim", platform="ascend", cpus_per_replica=0)
    endpoint.add_models([ModelConfig(model="/ckpt/npu-sim", tensor_parallel_size=2)], engine=engine)
    try:
        info = endpoint.engine_info("npu-sim")
        assert httpx.get(info["url"] + "/sim/stats").status_code == 401  # the simulator keeps the engine key rule
        stats = httpx.get(info["url"] + "/sim/stats", headers=engine_headers(info)).json()
        devices = stats["visible_devices"]["ASCEND_RT_VISIBLE_DEVICES"]
        assert len(devices.split(",")) == 2
        assert stats["engine_env"]["VLLM_MS_MODEL_BACKEND"] == "Native"
        answer = client.post("/v1/chat/completions", json={**CHAT, "model": "npu-sim"})
        assert answer.status_code == 200
    finally:
        endpoint.remove_model("npu-sim")


def test_infeasible_checkpoint_fails_fast_with_a_clear_error(endpoint):
    from cluster.errors import InfeasiblePlacementError

    engine = EngineConfig(kind="sim", platform="ascend", cpus_per_replica=0)
    with pytest.raises(InfeasiblePlacementError, match="NPU"):
        endpoint.add_models([ModelConfig(model="/ckpt/too-big", tensor_parallel_size=16)], engine=engine)
    assert "too-big" not in endpoint.served_models()


def engine_group(guard_pid: int) -> list[int]:
    """Pids of the engine's process group (the guard, the API server, vLLM's engine core and workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == guard_pid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_killed_engine_is_replaced_and_the_endpoint_answers_again(endpoint, client):
    """Last on purpose: it takes tiny-b down for the time Serve needs to notice and start a new engine."""
    dead = endpoint.engine_info("tiny-b")
    guard_pid = dead["pid"]
    api_server = int(subprocess.check_output(["pgrep", "-P", str(guard_pid)]).split()[0])
    os.kill(api_server, signal.SIGKILL)  # the engine crashes; its engine core and workers are left behind
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            answer = client.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}, timeout=30)
            if answer.status_code == 200 and endpoint.engine_info("tiny-b")["pid"] != guard_pid:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    else:
        pytest.fail(f"tiny-b did not answer within 300 s of its engine being killed: {serve.status()}")
    assert serve.status().applications[engine_app_name("tiny-b")].status == "RUNNING"
    assert engine_group(guard_pid) == []  # nothing of the dead engine survives to hold memory or ports
    assert not os.path.exists(dead["key_file"])  # nor its key
