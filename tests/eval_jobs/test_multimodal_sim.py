"""Image datasets against the simulated engine: the request bodies evalcluster sends are those of the real
`ais_bench` CLI, field for field, and the dataset's own evaluator scores them as `ais_bench` does.

No CPU model here reads images, so the engine is the simulator (`engine.kind: sim`), which records every body it
receives (`engine.sim.record_requests`). What is checked is what was sent and how it was scored, never what a model
answered: the references are made from the simulator's filler, so some verdicts are right and the others wrong.
Two configs share one tiny textvqa file: `textvqa_gen` (images as file:// URLs) and a copy of
`textvqa_gen_base64` under another abbr (images inline, base64 data URLs). `ais_bench` posts to the endpoint URL
(Serve's proxy and the ingress), evalcluster through Serve handles (the data plane): the engine sees the same bodies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from shared import API_KEY, MAX_REQUEST_BYTES

from cluster.errors import ConfigError
from eval_jobs.config import JobConfig
from eval_jobs.coverage.media_formats import write_image, write_textvqa
from eval_jobs.dataset_configs import resolve_config
from eval_jobs.datasets import load_dataset
from eval_jobs.evaluation import run_job, score
from eval_jobs.store import RunDir, SampleStore
from serve_apps.config import EngineConfig, ModelConfig, ServeConfig

MODEL = "sim-vision"
ROWS = 4
TEXTVQA = "ais_bench/datasets/textvqa/textvqa_json/textvqa_val.jsonl"
BASE64_COPY = "textvqa_b64_copy_gen"  # textvqa_gen_base64 under abbr textvqa_base64: two abbrs in one ais_bench run
CONFIGS = {"textvqa_gen": "textvqa", BASE64_COPY: "textvqa_base64"}
MODEL_CONFIG = f"""\
from ais_bench.benchmark.models import VLLMCustomAPIChat
from ais_bench.benchmark.utils.postprocess.model_postprocessors import extract_non_reasoning_content
models = [dict(
    attr="service", type=VLLMCustomAPIChat, abbr="sim-vision", path="", model="{MODEL}", stream=True,
    request_rate=0, use_timestamp=False, retry=2, api_key="{API_KEY}", host_ip="127.0.0.1", host_port={{port}},
    url="", max_out_len=24, batch_size=4, trust_remote_code=False,
    generation_kwargs=dict(temperature=0, ignore_eos=False),
    pred_postprocessor=dict(type=extract_non_reasoning_content),
)]
"""


@pytest.fixture(scope="module")
def sim_vision(ray_cluster, tmp_path_factory):
    """The simulator behind the session's Serve (its key and body limit, which it may share with the `endpoint`
    fixture's ingress), recording the bodies it receives; yields (endpoint, record file)."""
    from serve_apps.endpoint import Endpoint

    record = tmp_path_factory.mktemp("sim-record") / "bodies.jsonl"
    engine = EngineConfig(kind="sim", cpus_per_replica=0, startup_timeout_s=120,
                          sim={"output_tokens": 1, "record_requests": str(record)})
    ep = Endpoint(ServeConfig(port=0, api_key=API_KEY, max_request_bytes=MAX_REQUEST_BYTES, engine=engine,
                              models=[ModelConfig(model="/sim/vision", served_model_name=MODEL)])).start()
    yield ep, record
    ep.stop()


def filler(url: str) -> str:
    """What the simulator answers any chat (its filler), to make references from."""
    answer = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24})
    answer.raise_for_status()
    return answer.json()["choices"][0]["message"]["content"]


def write_configs(root: Path, port: int) -> Path:
    """A user's model config and the base64 copy, under a --config-dir as `ais_bench` finds them."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "sim_vision.py").write_text(MODEL_CONFIG.format(port=port))
    (root / "datasets").mkdir()
    text = resolve_config("textvqa_gen_base64").read_text().replace("abbr='textvqa'", "abbr='textvqa_base64'")
    assert "abbr='textvqa_base64'" in text
    (root / "datasets" / f"{BASE64_COPY}.py").write_text(text)
    return root


def ais_bench(config_dir: Path, data_dir: Path, work: Path) -> dict[str, dict]:
    """Run the real CLI (inference and its evaluation); its result (accuracy, per-sample details) per abbr."""
    env = {**os.environ, "AIS_BENCH_DATASETS_CACHE": str(data_dir)}
    command = [str(Path(sys.executable).with_name("ais_bench")), "--config-dir", str(config_dir),
               "--models", "sim_vision", "--datasets", *CONFIGS, "-w", str(work), "--dump-eval-details"]
    done = subprocess.run(command, cwd=work.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = list(work.glob("*/results/*"))
    return {abbr: json.loads((results / f"{abbr}.json").read_text()) for abbr in CONFIGS.values()}


def recorded(record: Path) -> list[dict]:
    """The bodies the simulator received, in a fixed order (each tool sends its rows concurrently)."""
    bodies = [json.loads(line) for line in record.read_text().splitlines()]
    return sorted(bodies, key=lambda b: json.dumps(b["messages"], sort_keys=True))


def verdict(detail: dict) -> bool:
    correct = detail["correct"]
    if isinstance(correct, list):
        [correct] = correct
    return bool(correct)


def test_image_bodies_and_scores_equal_those_of_the_ais_bench_cli_on_the_simulator(sim_vision, tmp_path) -> None:
    endpoint, record = sim_vision
    answer = filler(endpoint.url)
    data_dir = tmp_path / "data"
    # Even rows: the simulator's filler is the reference (a right verdict); odd rows: a wrong one.
    write_textvqa(data_dir / TEXTVQA, [answer if i % 2 == 0 else "purple" for i in range(ROWS)])
    config_dir = write_configs(tmp_path / "configs", endpoint.port)

    record.write_text("")
    theirs = ais_bench(config_dir, data_dir, tmp_path / "ais")
    their_bodies = recorded(record)

    record.write_text("")
    output = tmp_path / "ours"
    run_job(JobConfig(eval=dict(
        endpoint=endpoint.url, api_key=API_KEY, models=[MODEL], data_dir=str(data_dir), output=str(output),
        datasets=["textvqa_gen", str(config_dir / "datasets" / f"{BASE64_COPY}.py")],
        model_config=str(config_dir / "models" / "sim_vision.py"), clients=1, concurrency=4, timeout_s=60,
        # evalcluster adds vLLM's stream_interval by default (fewer chunks, the same answer); off, the bodies
        # must be the same.
        generation=dict(stream_interval=None), trackers=[])))
    our_bodies = recorded(record)

    # ais_bench first sends each dataset's first row once more, as a warm-up (BaseApiInferencer.warmup).
    assert len(their_bodies) == 2 * ROWS + 2
    their_bodies = [b for i, b in enumerate(their_bodies) if i == 0 or b != their_bodies[i - 1]]
    assert len(our_bodies) == len(their_bodies) == 2 * ROWS
    assert our_bodies == their_bodies
    urls = [part["image_url"]["url"] for body in our_bodies for part in body["messages"][0]["content"]
            if part["type"] == "image_url"]
    assert sum(u.startswith("file:///") for u in urls) == ROWS
    assert sum(u.startswith("data:image/jpeg;base64,/9j/") for u in urls) == ROWS  # the JPEG files, inline

    # Scored here by the test: a run on a simulator reports no scores in production, also through an endpoint.
    summary = pd.read_csv(RunDir(output).summary_csv)
    assert summary["simulated"].all() and "value" not in summary
    store = SampleStore(RunDir(output).samples_jsonl)
    datasets = {d.name: d for d in (load_dataset("textvqa_gen", data_dir),
                                    load_dataset(config_dir / "datasets" / f"{BASE64_COPY}.py", data_dir))}
    judged = score(list(store.latest().values()), datasets)
    for abbr in CONFIGS.values():
        rows = judged[judged["dataset"] == abbr].sort_values("index")
        assert (rows["status"] == "ok").all(), rows["error"].tolist()
        details = [theirs[abbr]["details"][str(i)] for i in range(ROWS)]
        assert rows["correct"].astype(bool).tolist() == [verdict(d) for d in details] == [True, False] * (ROWS // 2)
        assert rows["correct"].mean() * 100 == pytest.approx(theirs[abbr]["accuracy"])
    samples = pd.read_parquet(RunDir(output).samples_parquet)
    assert samples["endpoint"].str.startswith("serve:").all()  # evalcluster sent through Serve handles
    assert samples["prompt"].str.len().max() < 1000  # inline images are not stored whole once per sample


def test_a_body_over_the_ingress_limit_goes_through_serve_handles_and_fails_clearly_over_http(
        sim_vision, tmp_path) -> None:
    """An image larger than the ingress's max_request_bytes: Serve handles carry it to the engine whole; through the
    HTTP endpoint each such sample fails with the limit named (413, not retried)."""
    from PIL import Image

    endpoint, record = sim_vision
    data_dir = tmp_path / "data"
    write_textvqa(data_dir / TEXTVQA, ["red"])
    big = data_dir / "ais_bench/datasets/textvqa/textvqa_json/images/img0.jpg"
    Image.effect_noise((256, 256), 120).convert("RGB").save(big, format="JPEG", quality=100)  # noise: no compression
    assert big.stat().st_size * 4 / 3 > MAX_REQUEST_BYTES
    runs = {}
    for transport in ("auto", "http"):
        record.write_text("")
        output = tmp_path / transport
        run_job(JobConfig(eval=dict(endpoint=endpoint.url, api_key=API_KEY, models=[MODEL], transport=transport,
                                    datasets=["textvqa_gen_base64"], data_dir=str(data_dir), output=str(output),
                                    clients=1, timeout_s=60, max_retries=1, backoff_s=0.1, trackers=[])))
        runs[transport] = (pd.read_parquet(RunDir(output).samples_parquet), record.read_text())
    samples, bodies = runs["auto"]
    assert samples["status"].tolist() == ["ok"]
    [body] = [json.loads(line) for line in bodies.splitlines()]
    assert body["messages"][0]["content"][0]["image_url"]["url"].endswith(load_dataset(
        "textvqa_gen_base64", data_dir).messages[0][0]["content"][0]["image_url"]["url"][-100:])
    samples, bodies = runs["http"]
    assert samples["status"].tolist() == ["failed"] and bodies == ""
    assert "HTTP 413" in samples["error"][0] and str(MAX_REQUEST_BYTES) in samples["error"][0]
    assert samples["attempts"][0] == 1


def test_a_missing_or_relative_image_path_is_refused_at_load_naming_the_row(tmp_path) -> None:
    data = tmp_path / TEXTVQA
    write_textvqa(data, ["red", "green"])
    (data.parent / "images" / "img1.jpg").unlink()
    with pytest.raises(ConfigError, match=r"row 2: image_url file not found: .*/images/img1\.jpg"):
        load_dataset("textvqa_gen", tmp_path)
    write_image(data.parent / "images" / "img1.jpg", 1)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[0]["image"] = "images/img0.jpg"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"row 1: image_url 'file://images/img0\.jpg' is not an absolute file://"):
        load_dataset("textvqa_gen", tmp_path)


def test_text_only_rows_pass_but_a_template_that_renders_no_media_is_refused() -> None:
    """HLE mixes text-only questions with pictured ones: a row without media is fine, rows that all lack it mean
    the template renders none (a config mistake), refused before anything is sent."""
    from eval_jobs.multimodal import check_media

    text = [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}]
    pictured = [{"role": "user", "content": [{"type": "text", "text": "What colour?"},
                                             {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}}]}]
    check_media([text, pictured], "hle")
    with pytest.raises(ConfigError, match="hle: no row has an image, video or audio part rendered"):
        check_media([text, text], "hle")


def test_a_job_through_its_own_ingress_refuses_a_body_over_the_limit_before_sending(tmp_path) -> None:
    from eval_jobs.config import EvalConfig
    from eval_jobs.evaluation import build_requests
    from eval_jobs.multimodal import check_body_sizes

    write_textvqa(tmp_path / TEXTVQA, ["red", "green"])
    dataset = load_dataset("textvqa_gen_base64", tmp_path)
    requests = build_requests(EvalConfig(datasets=["textvqa_gen_base64"], output=str(tmp_path / "run")),
                              {"m": "http://127.0.0.1:1"}, [dataset])
    sizes = [len(json.dumps(r.body).encode()) for r in requests]
    check_body_sizes(requests, max(sizes))
    with pytest.raises(ConfigError, match=rf"dataset 'textvqa' row 1: request body of {sizes[0]} bytes exceeds "
                                          rf"serve.max_request_bytes = {min(sizes) - 1}: raise it, or leave "
                                          "eval.transport at auto"):
        check_body_sizes(requests, min(sizes) - 1)
