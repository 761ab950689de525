"""Datasets from AISBench configs: the rendered messages are AISBench's own, errors name file/field/value."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.paths import REPO_ROOT
from eval_jobs.dataset_configs import CACHE_ENV, default_data_dir, find_dataset_configs
from eval_jobs.datasets import EvalDataset, load_dataset, load_datasets
from eval_jobs.demo_dataset import DEMO_CONFIG, RELATIVE_PATH, main, write_demo_dataset

REMEMBER = "\nRemember to put your final answer within \\boxed{}."
# Invented AIME2025-format problems (not real AIME text); answers are strings, as in AISBench's file.
MADE_UP_AIME = [
    {"question": "Let $n$ be the number of positive multiples of $7$ below $50$. Find $n$.", "answer": "7"},
    {"question": "Find the remainder when $2^{10}$ is divided by $1000$.", "answer": "24"},
    {"question": "A square has perimeter $36$. Find its area.", "answer": "81"},
]
# Invented GSM8K-format rows (answers end in "#### N", which gsm8k_dataset_postprocess extracts).
MADE_UP_GSM8K = [
    {"question": "Ada has 4 pens and buys 5 more. How many pens has she?", "answer": "4 + 5 = 9\n#### 9"},
    {"question": "A box holds 6 eggs. How many eggs are in 3 boxes?", "answer": "3 * 6 = 18\n#### 18"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def made_up_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AISBench's layout with a made-up aime2025 file and a made-up gsm8k dir (train/test splits)."""
    root = tmp_path_factory.mktemp("made_up")
    write_jsonl(root / "ais_bench/datasets/aime2025/aime2025.jsonl", MADE_UP_AIME)
    for split in ("train", "test"):
        write_jsonl(root / f"ais_bench/datasets/gsm8k/{split}.jsonl", MADE_UP_GSM8K)
    return root


@pytest.fixture(scope="module")
def demo(data_dir: Path) -> EvalDataset:
    return load_dataset(DEMO_CONFIG, data_dir=data_dir)


def test_demo_messages_are_aisbench_messages(demo, data_dir, aisbench_build, aisbench_messages) -> None:
    built, cfg = aisbench_build(DEMO_CONFIG, data_dir)
    assert demo.messages == aisbench_messages(built, cfg)
    assert demo.references == list(built.test["answer"])
    assert len(demo) == 50 and demo.name == "demo_arith"
    assert demo.messages[0] == [
        {"role": "user", "content": "Tom has 3 apples and buys 2 more. How many apples does Tom have?"
         + REMEMBER}
    ]
    assert (demo.n, demo.k, demo.max_out_lens) == (1, (1,), None)


def test_made_up_aime2025_file_loads_with_the_shipped_config(
    made_up_dir, aisbench_build, aisbench_messages
) -> None:
    ds = load_dataset("aime2025_gen_0_shot_chat_prompt", data_dir=made_up_dir)
    built, cfg = aisbench_build("aime2025_gen_0_shot_chat_prompt", made_up_dir)
    assert ds.name == "aime2025"
    assert ds.messages == aisbench_messages(built, cfg)
    assert ds.messages == [[{"role": "user", "content": r["question"] + REMEMBER}] for r in MADE_UP_AIME]
    assert ds.references == [r["answer"] for r in MADE_UP_AIME]
    evaluator = {"type": "ais_bench.benchmark.datasets.math.MATHEvaluator", "version": "v2"}
    assert ds.eval_cfg["evaluator"] == evaluator


def test_few_shot_chat_config_renders_multi_turn_like_aisbench(
    made_up_dir, aisbench_build, aisbench_messages
) -> None:
    # gsm8k 4-shot: HUMAN/BOT example rounds must become user/assistant turns exactly as AISBench sends them.
    ds = load_dataset("gsm8k_gen_4_shot_cot_chat_prompt", data_dir=made_up_dir)
    built, cfg = aisbench_build("gsm8k_gen_4_shot_cot_chat_prompt", made_up_dir)
    assert ds.messages == aisbench_messages(built, cfg)
    assert [m["role"] for m in ds.messages[0]] == ["user", "assistant"] * 4 + ["user"]
    question = MADE_UP_GSM8K[1]["question"]
    assert ds.messages[1][-1]["content"] == f"Question: {question}\nLet's think step by step\nAnswer:"


def test_dataset_is_plain_data_for_ray(demo, tmp_path) -> None:
    path = tmp_path / "ds.pkl"
    path.write_bytes(pickle.dumps(demo))
    assert pickle.loads(path.read_bytes()) == demo
    # Unpickling must not need ais_bench (the actor imports it only when it scores).
    code = (
        f"import pickle, sys; pickle.loads(open({str(path)!r}, 'rb').read()); "
        "print('ais_bench' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_data_dir_env_is_restored_and_honoured(data_dir, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    load_dataset(DEMO_CONFIG, data_dir=data_dir)
    assert os.environ[CACHE_ENV] == str(tmp_path)
    monkeypatch.setenv(CACHE_ENV, str(data_dir))
    assert len(load_dataset(DEMO_CONFIG)) == 50  # no data_dir: $AIS_BENCH_DATASETS_CACHE
    monkeypatch.delenv(CACHE_ENV)
    load_dataset(DEMO_CONFIG, data_dir=data_dir)
    assert CACHE_ENV not in os.environ


def test_default_data_dir_is_evalcluster_home(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("EVALCLUSTER_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "datasets"
    assert main([]) == 0  # python -m eval_jobs.demo_dataset without arguments
    assert (tmp_path / "datasets" / RELATIVE_PATH).is_file()
    assert len(load_dataset(DEMO_CONFIG)) == 50


def test_demo_dataset_is_deterministic(tmp_path) -> None:
    first = write_demo_dataset(tmp_path / "a").read_bytes()
    second = write_demo_dataset(tmp_path / "b").read_bytes()
    assert first == second
    assert len(first.splitlines()) == 50


def test_find_dataset_configs(data_dir, made_up_dir) -> None:
    [demo] = find_dataset_configs(DEMO_CONFIG, data_dir)
    assert demo.config_path == REPO_ROOT / "configs/datasets" / f"{DEMO_CONFIG}.py"
    assert (demo.abbr, demo.data_path, demo.data_exists) == ("demo_arith", data_dir / RELATIVE_PATH, True)
    found = {i.name: i for i in find_dataset_configs("aime202*_chat_prompt", made_up_dir)}
    assert found["aime2025_gen_0_shot_chat_prompt"].data_exists
    assert not found["aime2024_gen_0_shot_chat_prompt"].data_exists


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ConfigError, match="aime2025_gen_0_shot_chat_prompt") as err:
        load_dataset("aime2025_gen_0_shot")
    assert "'aime2025_gen_0_shot'" in str(err.value) and "did you mean" in str(err.value)


def test_missing_data_file_names_the_expected_path(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset(DEMO_CONFIG, data_dir=tmp_path)
    assert str(tmp_path / RELATIVE_PATH) in str(err.value)


@pytest.mark.parametrize("bad_line", [1, 3])
def test_row_without_answer_names_file_and_line(tmp_path, bad_line) -> None:
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(5)]
    del rows[bad_line - 1]["answer"]
    path = write_jsonl(tmp_path / RELATIVE_PATH, rows)
    with pytest.raises(ConfigError) as err:
        load_dataset(DEMO_CONFIG, data_dir=tmp_path)
    assert f"{path} line {bad_line}: no 'answer' field" in str(err.value)


def test_config_with_several_datasets(data_dir, tmp_path) -> None:
    text = (REPO_ROOT / "configs/datasets" / f"{DEMO_CONFIG}.py").read_text()
    config = tmp_path / "two_demos.py"
    extra = "demo_arith_datasets.append(dict(demo_arith_datasets[0], abbr='again', n=4, k=[1, 2]))"
    config.write_text(f"{text}\n{extra}\n")
    first, second = load_datasets(config, data_dir=data_dir)
    assert (first.name, second.name, second.n, second.k) == ("demo_arith", "again", 4, (1, 2))
    assert second.messages == first.messages  # n repeats are evalcluster's, rows are not duplicated
    with pytest.raises(ConfigError, match="defines 2 datasets \\(demo_arith, again\\)"):
        load_dataset(config, data_dir=data_dir)
    config.write_text(text + "\ndemo_arith_datasets[0]['n'] = 2\ndemo_arith_datasets[0]['k'] = 3\n")
    with pytest.raises(ConfigError, match="k = 3"):
        load_dataset(config, data_dir=data_dir)


def test_default_requests_carry_what_ais_bench_sends(demo) -> None:
    """With nothing set in `generation`, a request's fields besides the messages are exactly AISBench's
    vllm_api_general_chat body (max_tokens from its max_out_len, its generation_kwargs: temperature 0.01)."""
    import asyncio

    from ais_bench.benchmark.models.output import RequestOutput
    from ais_bench.benchmark.utils.config import build_model_from_cfg
    from mmengine.config import Config

    from eval_jobs.config import EvalConfig
    from eval_jobs.dataset_configs import GENERAL_CHAT_MODEL, shipped_configs_dir
    from eval_jobs.evaluation import build_requests

    model_cfg = Config.fromfile(str(shipped_configs_dir() / GENERAL_CHAT_MODEL))["models"][0]
    model_cfg["model"] = "m"  # non-empty: no GET /v1/models at construction
    model_cfg["type"] = f"{model_cfg['type'].__module__}.{model_cfg['type'].__name__}"  # as ais_bench dumps it
    model = build_model_from_cfg(model_cfg)
    theirs = asyncio.run(model.get_request_body("q", model_cfg["max_out_len"], RequestOutput(False)))
    cfg = EvalConfig(datasets=[DEMO_CONFIG], limit=1, generation={"stream_interval": None})
    ours = build_requests(cfg, {"m": "http://x"}, [demo])[0].body
    assert theirs["temperature"] == 0.01
    drop = {"messages", "stream", "stream_options"}
    assert {k: v for k, v in ours.items() if k not in drop} == {k: v for k, v in theirs.items() if k not in drop}


def test_synthetic_prompts_are_made_with_the_served_checkpoints_tokenizer(tmp_path) -> None:
    """SyntheticDataset decodes random token ids with the model's tokenizer. The default model config has no
    `path`; a job that serves one checkpoint gives the loader that checkpoint's directory, as `ais_bench` gives the
    model config's `path`. Without a served checkpoint the error says where the tokenizer could come from."""
    from eval_jobs.config import JobConfig
    from eval_jobs.coverage.data_files import write_tokenizer
    from eval_jobs.evaluation import served_checkpoint

    checkpoint_dir = write_tokenizer(tmp_path / "ckpt")  # a word-level tokenizer: its prompts are its own words
    vocabulary = set(json.loads((checkpoint_dir / "tokenizer.json").read_text())["model"]["vocab"])

    def job(*names: str) -> JobConfig:
        return JobConfig(serve={"models": [{"model": str(checkpoint_dir), "served_model_name": n} for n in names]},
                         eval={"datasets": ["synthetic_gen_tokenid"], "data_dir": str(tmp_path)})

    checkpoint = served_checkpoint(job("ckpt"))
    assert checkpoint is not None and checkpoint.directory == checkpoint_dir.resolve()
    (dataset,) = load_datasets("synthetic_gen_tokenid", tmp_path, served_checkpoint=checkpoint)
    words = [messages[0]["content"].split() for messages in dataset.messages]
    assert len(words) == 10 and all(len(w) == 10 and set(w) <= vocabulary for w in words)  # RequestSize 10
    assert served_checkpoint(job("a", "b")) == checkpoint  # two names for one directory: still one tokenizer
    with pytest.raises(ConfigError, match="SyntheticDataset counts tokens.*serve the one checkpoint evaluated"):
        load_datasets("synthetic_gen_tokenid", tmp_path)
