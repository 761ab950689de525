"""What each dataset row sends, rendered by AISBench itself: the dataset's retriever and prompt template, then the
run's AISBench model config (its template parser and request body), so the messages or prompt are exactly those
`ais_bench` would post.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
from typing import Any

from eval_jobs.model_config import DEFAULT_MODEL_CONFIG, ModelConfig, load_model_config


def retriever_for(dataset: Any, infer_cfg: Any) -> Any:
    """The dataset's AISBench retriever, wired as OpenICLApiInferTask._get_data_list wires it."""
    from ais_bench.benchmark.registry import ICL_RETRIEVERS

    retriever_cfg = copy.deepcopy(infer_cfg["retriever"])
    retriever_cfg["dataset"] = dataset
    retriever_cfg["prompt_template"] = infer_cfg.get("prompt_template")
    retriever_cfg["ice_template"] = infer_cfg.get("ice_template")
    return ICL_RETRIEVERS.build(retriever_cfg)


def render(dataset: Any, infer_cfg: Any, model_config: ModelConfig | None = None) -> list[list[dict[str, Any]] | str]:
    """What each test row sends, built the way GenInferencer.get_data_list and the model config's class do: chat
    messages (VLLMCustomAPIChat), or the prompt string its meta_template makes (VLLMCustomAPI). For a PPL dataset:
    each row's first option (`ppl.render_options` gives them all); for a multi-turn one, each row's first request
    (`multiturn.render_conversations` gives them all); for a BFCL one, each question's first request's messages
    (`function_calls.render_function_calls` gives its turns and tools)."""
    from ais_bench.benchmark.models.output import RequestOutput

    from eval_jobs import function_calls, multiturn, ppl

    if function_calls.is_function_call(infer_cfg):
        specs = function_calls.render_function_calls(dataset, infer_cfg, model_config or load_model_config(),
                                                     "dataset")
        return [function_calls.sent_messages(spec["turns"][0]["messages"]) for spec in specs]
    if ppl.is_ppl(infer_cfg):
        return [row[0] for row in ppl.render_options(dataset, infer_cfg)[1]]
    if multiturn.is_multiturn(infer_cfg):
        conversations = multiturn.render_conversations(dataset, infer_cfg, model_config or load_model_config(),
                                                       "dataset")
        return [row["turns"][0]["messages"] for row in conversations]
    retriever = retriever_for(dataset, infer_cfg)
    replace_token = infer_cfg["inferencer"].get("gen_field_replace_token", "") or ""
    model_config = model_config or load_model_config()
    model = model_config.build()
    field = "prompt" if model_config.api == "completions" else "messages"
    prompts = []
    for idx, ice_idx in enumerate(retriever.retrieve()):
        ice = retriever.generate_ice(ice_idx)
        prompt = retriever.generate_prompt_for_generate_task(idx, ice, gen_field_replace_token=replace_token)
        prompts.append(model.parse_template(prompt, mode="gen"))

    async def bodies() -> list[dict[str, Any]]:
        # get_request_body is where VLLMCustomAPIChat maps roles (HUMAN -> user, ...) and prompt -> content.
        # It is async but never awaits I/O; max_out_len only has to be > 0 (it returns "" otherwise).
        return [await model.get_request_body(p, 1, RequestOutput(False)) for p in prompts]

    return [body[field] for body in _run_sync(bodies())]


def aisbench_request_defaults(model_config: str = DEFAULT_MODEL_CONFIG) -> dict[str, Any]:
    """What `ais_bench --models MODEL_CONFIG` puts in every request besides the input: max_tokens (its
    max_out_len) and its generation_kwargs."""
    return load_model_config(model_config).request_defaults()


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside a running event loop (e.g. an async actor)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
