"""AISBench model configs by name or path (eval.model_config): the API they speak, the defaults and postprocessor
they carry, their meta_template applied by AISBench's own template parsers, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ConfigError
from eval_jobs.config import EvalConfig
from eval_jobs.datasets import load_dataset
from eval_jobs.demo_dataset import DEMO_CONFIG
from eval_jobs.model_config import load_model_config
from eval_jobs.evaluation import build_requests

COMPLETIONS_WITH_TEMPLATE = """\
from ais_bench.benchmark.models import VLLMCustomAPI
models = [dict(attr="service", type=VLLMCustomAPI, abbr="base", path="", model="", max_out_len=77,
               generation_kwargs=dict(temperature=0.5, top_k=3, num_return_sequences=2),
               meta_template=dict(round=[dict(role="HUMAN", begin="Q: ", end="\\n"),
                                         dict(role="BOT", begin="A:", generate=True)]))]
"""
CHAT_WITH_SYSTEM = """\
from ais_bench.benchmark.models import VLLMCustomAPIChat
models = [dict(attr="service", type=VLLMCustomAPIChat, abbr="sys", path="", model="", max_out_len=64,
               generation_kwargs=dict(temperature=0.01),
               meta_template=dict(round=[dict(role="HUMAN", api_role="HUMAN"),
                                         dict(role="BOT", api_role="BOT", generate=True)],
                                  reserved_roles=[dict(role="SYSTEM", api_role="SYSTEM")],
                                  begin=dict(role="SYSTEM", prompt="Answer briefly.")))]
"""


def test_shipped_configs_by_name() -> None:
    chat, stream_chat = load_model_config("vllm_api_general_chat"), load_model_config("vllm_api_stream_chat")
    general, general_stream = load_model_config("vllm_api_general"), load_model_config("vllm_api_general_stream")
    assert (chat.api, stream_chat.api, general.api, general_stream.api) == ("chat", "chat", "completions",
                                                                             "completions")
    assert chat.request_defaults() == {"max_tokens": 512, "temperature": 0.01, "ignore_eos": False}
    assert chat.pred_postprocessor["type"].endswith("extract_non_reasoning_content")
    assert general.pred_postprocessor is None


def test_a_completions_copy_renders_through_its_meta_template(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "my_base.py"
    path.write_text(COMPLETIONS_WITH_TEMPLATE)
    ds = load_dataset(DEMO_CONFIG, data_dir=data_dir, model_config=str(path))
    question = load_dataset(DEMO_CONFIG, data_dir=data_dir).messages[0][-1]["content"]
    assert ds.api == "completions" and ds.messages[0] == f"Q: {question}\nA:"
    cfg = EvalConfig(datasets=[DEMO_CONFIG], model_config=str(path), limit=1)
    [first, second] = build_requests(cfg, {"m": "http://x"}, [ds])
    assert first.body["prompt"] == ds.messages[0] and "messages" not in first.body
    # Its max_out_len and generation_kwargs are the defaults; num_return_sequences is its repeat count.
    assert {k: first.body[k] for k in ("max_tokens", "temperature", "top_k")} == {"max_tokens": 77, "temperature": 0.5,
                                                                                  "top_k": 3}
    assert "num_return_sequences" not in first.body and (first.key.repeat, second.key.repeat) == (0, 1)
    # eval.generation fields win over the model config's.
    cfg = EvalConfig(datasets=[DEMO_CONFIG], model_config=str(path), limit=1, num_repeats=1,
                     generation={"max_out_len": 9, "temperature": 0})
    [only] = build_requests(cfg, {"m": "http://x"}, [ds])
    assert (only.body["max_tokens"], only.body["temperature"], only.body["top_k"]) == (9, 0, 3)


def test_a_chat_copy_with_a_system_prompt_in_its_meta_template(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "with_system.py"
    path.write_text(CHAT_WITH_SYSTEM)
    ds = load_dataset(DEMO_CONFIG, data_dir=data_dir, model_config=str(path))
    assert ds.api == "chat" and ds.messages[0][0] == {"role": "system", "content": "Answer briefly."}
    assert ds.messages[0][1]["role"] == "user"


def test_unknown_names_and_other_server_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval.model_config = 'vllm_api_genral'.*did you mean: vllm_api_general"):
        load_model_config("vllm_api_genral")
    with pytest.raises(ConfigError, match=r"tgi_api_general.py: models\[0\].type = .*TGICustomAPI.*not an "
                                          "OpenAI-compatible vLLM API model"):
        load_model_config("tgi_api_general")
    with pytest.raises(ConfigError, match="model config file not found"):
        EvalConfig(datasets=["x"], model_config=str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text(COMPLETIONS_WITH_TEMPLATE.replace("max_out_len=77", "max_out_len=0"))
    with pytest.raises(ConfigError, match=r"bad.py: models\[0\].max_out_len = 0"):
        load_model_config(str(bad))
