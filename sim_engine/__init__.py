"""The simulated-latency engine: an OpenAI-compatible server that only pretends to generate.

It stands in for vLLM when benchmarking orchestration at scale on CPU, and in tests where time matters: the
engine supervisor starts it like a real engine (`engine.kind: sim`), on any platform's resources, so
placement, device visibility and request routing are exercised without a model. It is a SIMULATOR everywhere
it shows: the start-up log line, `owned_by` and `metadata` of its model card, and every response's
`system_fingerprint`. Its outputs are filler ("sim sim sim") and never a score: a run on it is marked
simulated and reports no scores (`eval_jobs/run.py`).

    serve:
      engine: {kind: sim, sim: {ttft_s: 0.05, tpot_s: 0.01, output_tokens: 64, max_num_seqs: 8}}

or by hand:

    python -m sim_engine --host 127.0.0.1 --port 8100 --served-model-name step_400 \\
        --ttft-s 0.05 --tpot-s 0.01 [--output-tokens 64] [--max-model-len 4096] [--max-num-seqs 8]

`config.py`: the `engine.sim:` settings and the command; `protocol.py`: requests validated and answers built
as vLLM does; `server.py`: the aiohttp app, its batch slots and clock; `__main__.py`: the command line.

It sits outside `serve_apps/` (which holds only what serves); it borrows one thing from there, the engine-side
key rule (`serve_apps/engine_site/`), so that it checks the engine key exactly as a real engine behind the
supervisor does.
"""

from sim_engine.config import SimEngineConfig, sim_command

__all__ = ["SimEngineConfig", "sim_command"]
