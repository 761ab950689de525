"""The `ais_bench` CLI as a peer: one run against a server of ours, timed from start to its written summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DATASET, LOG_DIR, stop_group
from cluster.paths import REPO_ROOT, evalcluster_home

AIS_BENCH = Path(sys.executable).parent / "ais_bench"

# ais_bench's own vllm_api_general_chat, pointed at our server; model named so it skips its /v1/models lookup.
AIS_MODEL_CFG = """\
from ais_bench.benchmark.models import VLLMCustomAPIChat
from ais_bench.benchmark.utils.postprocess.model_postprocessors import extract_non_reasoning_content

models = [dict(attr="service", type=VLLMCustomAPIChat, abbr="bench-general-chat", path="", model={name!r},
               stream=True, request_rate=0, use_timestamp=False, retry=2, api_key="", host_ip="127.0.0.1",
               host_port={port}, url="", max_out_len={max_tokens}, batch_size={concurrency},
               trust_remote_code=False, generation_kwargs=dict(temperature=0),
               pred_postprocessor=dict(type=extract_non_reasoning_content))]
"""


def run_ais_bench(url: str, model: str, concurrency: int, max_tokens: int, tag: str, num_prompts: int | None = None,
                  data_dir: Path | None = None, infer_only: bool = False) -> float | None:
    """Wall seconds of one `ais_bench` run of the demo dataset (start-up, inference, scoring, summary; with
    `infer_only`, its `--mode infer`: start-up and inference), or None if it failed. `data_dir` replaces the datasets
    cache (for a bigger demo_arith file). Its configs, log and outputs stay under the bench log dir as
    `ais_bench-<tag>` (replaced by the next run) for a look at where its time went."""
    work = LOG_DIR / f"ais_bench-{tag}"
    shutil.rmtree(work, ignore_errors=True)
    cfg_dir = work / "configs"
    (cfg_dir / "models").mkdir(parents=True)
    (cfg_dir / "datasets").mkdir()
    port = int(url.rsplit(":", 1)[1])
    (cfg_dir / "models" / "bench_general_chat.py").write_text(AIS_MODEL_CFG.format(
        name=model, port=port, max_tokens=max_tokens, concurrency=concurrency))
    # The same dataset config evalcluster renders from (it ships with the repo, not with AISBench).
    (cfg_dir / "datasets" / f"{DATASET}.py").symlink_to(REPO_ROOT / "configs" / "datasets" / f"{DATASET}.py")
    argv = [str(AIS_BENCH), "--models", "bench_general_chat", "--datasets", DATASET, "--config-dir", str(cfg_dir),
            "-w", str(work / "out"), "--mode", "infer" if infer_only else "all"]
    argv += ["--num-prompts", str(num_prompts)] if num_prompts else []
    env = {**os.environ, "AIS_BENCH_DATASETS_CACHE": str(data_dir or evalcluster_home() / "datasets"),
           "NO_PROXY": "127.0.0.1"}
    t0 = time.perf_counter()
    # Its own process group: ais_bench runs its inference and evaluation tasks as child processes, which must not
    # outlive an interrupted benchmark.
    with open(work / "ais_bench.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
    try:
        code = proc.wait()
    finally:
        stop_group(proc)
    seconds = time.perf_counter() - t0
    # It can exit 0 with failed predictions: trust only what it wrote last (the summary, or the predictions).
    written = "*/predictions/*/*.json*" if infer_only else "*/summary/summary_*.csv"
    if code != 0 or not list((work / "out").glob(written)):
        print(f"ais_bench failed (exit {code}); see {work / 'ais_bench.log'}")
        return None
    return seconds
