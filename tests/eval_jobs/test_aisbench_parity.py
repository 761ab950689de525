"""evalcluster against the real `ais_bench` CLI: with the same AISBench model config and the same endpoint, every
sample gets the same answer and the same verdict.

Three shipped dataset configs (three evaluators: MATHEvaluator v2, Gsm8kEvaluator, MATHEvaluator with math_verify)
on tiny invented data files; the real vLLM CPU engine (tiny-qwen2, greedy) behind the session's endpoint. The
model config is a user's own copy, given to both tools: a chat one (`VLLMCustomAPIChat`) and a completions one
(`VLLMCustomAPI`, /v1/completions), evalcluster sending through Serve handles (the data plane) and over HTTP,
`ais_bench` over HTTP. The engine answers random text, so the references of half the rows are made from
evalcluster's first answers (what AISBench extracted from them): some verdicts are right, the others wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from eval_jobs.config import JobConfig
from eval_jobs.evaluation import run_job
from eval_jobs.store import RunDir
from shared import API_KEY

ROWS = 4
MAX_OUT_LEN = 24
QUESTIONS = [f"Add {i} and {i + 5}, then double it." for i in range(ROWS)]
# config name -> (dataset abbr, file under the data dir, row writer(question, answer))
DATASETS = {
    "aime2025_gen_0_shot_chat_prompt": ("aime2025", "ais_bench/datasets/aime2025/aime2025.jsonl",
                                        lambda q, a: {"question": q, "answer": a}),
    "gsm8k_gen_0_shot_cot_chat_prompt": ("gsm8k", "ais_bench/datasets/gsm8k/test.jsonl",
                                         lambda q, a: {"question": q, "answer": f"Work.\n#### {a}"}),
    "math500_gen_0_shot_cot_chat_prompt": ("math_prm800k_500", "ais_bench/datasets/math/test_prm800k_500.jsonl",
                                           lambda q, a: {"problem": q, "solution": f"So \\boxed{{{a}}}."}),
}
MODEL_CONFIG = """\
from ais_bench.benchmark.models import {cls}
{imports}
models = [dict(
    attr="service", type={cls}, abbr="{abbr}", path="", model="tiny-a", stream=False, request_rate=0,
    use_timestamp=False, retry=2, api_key="{key}", host_ip="127.0.0.1", host_port={port}, url="",
    max_out_len={max_out_len}, batch_size=4, trust_remote_code=False,
    generation_kwargs=dict(temperature=0, ignore_eos=False),
    {extra}
)]
"""


def write_model_config(path: Path, api: str, port: int) -> Path:
    if api == "chat":
        text = MODEL_CONFIG.format(
            cls="VLLMCustomAPIChat", abbr="tiny-chat", key=API_KEY, port=port, max_out_len=MAX_OUT_LEN,
            imports="from ais_bench.benchmark.utils.postprocess.model_postprocessors import "
                    "extract_non_reasoning_content",
            extra="pred_postprocessor=dict(type=extract_non_reasoning_content),")
    else:
        text = MODEL_CONFIG.format(cls="VLLMCustomAPI", abbr="tiny-completions", key=API_KEY, port=port,
                                   max_out_len=MAX_OUT_LEN, imports="", extra="")
    path.write_text(text)
    return path


def write_data(root: Path, answers: dict[str, list[str]]) -> None:
    for config, (_, relative, row) in DATASETS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row(q, a)) + "\n" for q, a in zip(QUESTIONS, answers[config])))
        if config.startswith("gsm8k"):  # GSM8KDataset reads both splits
            (path.parent / "train.jsonl").write_text(path.read_text())


def evalcluster(endpoint, model_config: Path, data_dir: Path, output: Path, transport: str) -> pd.DataFrame:
    run_job(JobConfig(eval=dict(
        endpoint=endpoint.url, api_key=API_KEY, models=["tiny-a"], datasets=list(DATASETS), data_dir=str(data_dir),
        model_config=str(model_config), limit=ROWS, transport=transport, clients=1, concurrency=4,
        timeout_s=60, output=str(output), trackers=[])))
    return pd.read_parquet(RunDir(output).samples_parquet)


def ais_bench(model_config: Path, data_dir: Path, work: Path) -> dict[str, list[dict]]:
    """Run the real CLI; its per-sample details (prediction, verdict) per dataset abbr, in row order."""
    env = {**os.environ, "AIS_BENCH_DATASETS_CACHE": str(data_dir)}
    # `--models` takes names only, found under --config-dir/models/ (or AISBench's own configs).
    command = [str(Path(sys.executable).with_name("ais_bench")), "--config-dir", str(model_config.parents[1]),
               "--models", model_config.stem, "--datasets", *DATASETS, "-w", str(work),
               "--num-prompts", str(ROWS), "--dump-eval-details"]
    done = subprocess.run(command, cwd=work.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = list(work.glob("*/results/*"))
    details = {}
    for abbr, *_ in DATASETS.values():
        result = json.loads((results / f"{abbr}.json").read_text())
        details[abbr] = [result["details"][str(i)] for i in range(ROWS)]
    return details


def verdict(detail: dict) -> bool:
    """A sample's verdict in AISBench's dumped details: `correct`, a bool or a one-element list (one replica)."""
    correct = detail["correct"]
    if isinstance(correct, list):
        [correct] = correct
    return bool(correct)


def references_from(samples: pd.DataFrame) -> dict[str, list[str]]:
    """Even rows: what AISBench extracted from this engine's answer (a right verdict); odd rows: a wrong one."""
    answers = {}
    for config, (abbr, *_) in DATASETS.items():
        rows = samples[samples["dataset"] == abbr].sort_values("index")
        answers[config] = [str(e) if i % 2 == 0 and str(e).strip() else "999999"
                           for i, e in enumerate(rows["extracted"])]
    return answers


@pytest.mark.engine
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_verdicts_equal_those_of_the_ais_bench_cli(endpoint, ray_cluster, tmp_path, api) -> None:
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    (tmp_path / "configs" / "models").mkdir(parents=True)
    model_config = write_model_config(tmp_path / "configs" / "models" / f"tiny_{api}.py", api, port)
    data_dir = tmp_path / "data"
    write_data(data_dir, {config: ["999999"] * ROWS for config in DATASETS})
    first = evalcluster(endpoint, model_config, data_dir, tmp_path / "first", "auto")
    write_data(data_dir, references_from(first))

    theirs = ais_bench(model_config, data_dir, tmp_path / "ais")
    for transport in ("auto", "http"):  # auto: Serve handles to the engine supervisors; http: the endpoint URL
        ours = evalcluster(endpoint, model_config, data_dir, tmp_path / f"ours-{transport}", transport)
        assert (ours["status"] == "ok").all(), ours["error"].tolist()
        for config, (abbr, *_) in DATASETS.items():
            rows = ours[ours["dataset"] == abbr].sort_values("index")
            assert rows["index"].tolist() == list(range(ROWS))
            assert rows["response"].tolist() == [d["origin_prediction"] for d in theirs[abbr]], (transport, abbr)
            assert rows["correct"].astype(bool).tolist() == [verdict(d) for d in theirs[abbr]], \
                (transport, abbr, rows["extracted"].tolist(), theirs[abbr])
    verdicts = [verdict(d) for details in theirs.values() for d in details]
    assert any(verdicts) and not all(verdicts), verdicts  # both kinds of verdict were compared
