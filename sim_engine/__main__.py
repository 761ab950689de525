"""`python -m sim_engine`: one simulated engine on one port, as the engine supervisor starts it
(`sim_engine.config.sim_command` builds this argv from `engine.sim`).
"""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web
from pydantic import ValidationError

from sim_engine.config import DEFAULT_MAX_MODEL_LEN, SimEngineConfig
from sim_engine.server import DEVICE_ENV_VARS, SimEngine

logger = logging.getLogger("evalcluster.sim_engine")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SimEngineConfig]:
    """The flags, and the simulator's settings validated by its config model (so the CLI and `engine.sim:`
    accept the same values)."""
    fields = SimEngineConfig.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m sim_engine",
        description="evalcluster simulated-latency engine (a SIMULATOR, not a model)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind; loopback by default.")
    parser.add_argument("--port", type=int, required=True, help="Port to bind.")
    parser.add_argument("--served-model-name", required=True, help="The one model id this engine answers to.")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN,
                        help="Context length reported and enforced.")
    for name, kind in (("ttft_s", float), ("tpot_s", float), ("output_tokens", int), ("max_num_seqs", int)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=fields[name].default,
                            help=fields[name].description)
    parser.add_argument("--record-requests", default=None, help=fields["record_requests"].description)
    args = parser.parse_args(argv)
    if args.max_model_len < 1:
        parser.error("--max-model-len must be >= 1")
    try:
        config = SimEngineConfig(**{name: getattr(args, name) for name in fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        parser.error(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    devices = {name: os.environ[name] for name in DEVICE_ENV_VARS if name in os.environ}
    logger.info(
        "SIMULATOR: evalcluster sim engine (not a model; outputs are filler, never scored) serving %r on "
        "http://%s:%d (ttft_s=%s tpot_s=%s output_tokens=%s max_model_len=%s max_num_seqs=%s devices=%s)",
        args.served_model_name,
        args.host,
        args.port,
        config.ttft_s,
        config.tpot_s,
        config.output_tokens,
        args.max_model_len,
        config.max_num_seqs,
        devices or "none",
    )
    # No access log: at thousands of requests per second it would cost more than the simulated work.
    # handler_cancellation: a client that disconnects stops its simulated generation, like vLLM aborting it.
    # shutdown_timeout: the supervisor's terminate → wait → kill should not wait a minute for in-flight
    # streams.
    web.run_app(
        SimEngine(config, args.served_model_name, args.max_model_len).app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
