"""`evalcluster`: serve checkpoints, evaluate or sweep them, convert MindSpore checkpoints, prepare models, find
datasets, start cluster nodes.

Each subcommand turns its flags into the same config sections the YAML files use (`cluster:`, `serve:`, `eval:`),
so a flag and a config field always mean the same thing.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from cluster.configfile import load_section
from cluster.errors import ConfigError, run_command
from eval_jobs.config import EvalConfig
from eval_jobs.sweep.config import SweepConfig
from evalcluster_cli.config_flags import add_config_flags, config_overrides
from serve_apps.config import ServeConfig

SEED_EXAMPLE = "evalcluster serve --model DIR --tensor-parallel-size 8 --platform ascend"


def _engine_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--engine-arg wants KEY=VALUE, got {text!r}")
    lowered = value.lower()
    return key, True if lowered in ("", "true") else False if lowered == "false" else value


def _warn_key_in_argv(args: argparse.Namespace) -> None:
    if any(dest.rsplit(".", 1)[-1] == "api_key" and value for dest, value in vars(args).items()):
        print("warning: --api-key is visible to every user of this machine in `ps`; use --api-key-file or "
              "$EVALCLUSTER_API_KEY", file=sys.stderr)


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None and v != [] and v != {}}


# -- serve ------------------------------------------------------------------------------------------------------

# Names the serve: flags had before they were generated from ServeConfig (each also has its full name).
ENGINE_FLAG_ALIASES = {"engine.platform": ["--platform"], "engine.python": ["--engine-python"],
                       "engine.kind": ["--engine"], "engine.startup_timeout_s": ["--startup-timeout"]}
ENDPOINT_FLAG_ALIASES = {"host": ["--host"], "port": ["--port"], "api_key": ["--api-key"],
                         "api_key_file": ["--api-key-file"]}
CLUSTER_FLAG_ALIASES = {"address": ["--address"]}


def add_checkpoint_flags(p: argparse.ArgumentParser, *, model_flag: str = "--model") -> None:
    """The seed's `api_server` flags: each --model is one entry of `serve.models`, the others apply to every one."""
    g = p.add_argument_group("checkpoints (the vllm-mindspore api_server flags)")
    g.add_argument(model_flag, dest="model_dirs", action="append", metavar="DIR", help="checkpoint directory "
                   "(or a prepared model name: smollm2-135m-instruct, tiny-qwen2); repeat for several")
    g.add_argument("--served-model-name", action="append", help="name clients use (one per --model)")
    g.add_argument("--tensor-parallel-size", type=int)
    g.add_argument("--max-model-len", type=int)
    g.add_argument("--gpu-memory-utilization", type=float)
    g.add_argument("--trust-remote-code", action="store_true", default=None)
    g.add_argument("--dtype")
    g.add_argument("--num-replicas", type=int, help="engine replicas per checkpoint")
    g.add_argument("--engine-arg", action="append", type=_engine_arg, default=[], metavar="KEY=VALUE",
                   help="extra engine flag, repeatable (e.g. --engine-arg max-num-seqs=64)")


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `serve:` fields the flags set; the checkpoint flags, when --model is given, replace `serve.models`."""
    fields = config_overrides(args, "serve")
    if args.model_dirs:
        if "models" in fields:
            raise ConfigError("give the checkpoints either as --model flags or as --serve.models, not both")
        names = args.served_model_name or []
        if names and len(names) != len(args.model_dirs):
            raise ConfigError(f"--served-model-name given {len(names)} times for {len(args.model_dirs)} --model")
        common = _drop_none({
            "tensor_parallel_size": args.tensor_parallel_size, "max_model_len": args.max_model_len,
            "gpu_memory_utilization": args.gpu_memory_utilization, "trust_remote_code": args.trust_remote_code,
            "dtype": args.dtype, "num_replicas": args.num_replicas, "engine_args": dict(args.engine_arg),
        })  # fmt: skip
        fields["models"] = [
            {"model": d, **common, **({"served_model_name": names[i]} if names else {})}
            for i, d in enumerate(args.model_dirs)
        ]
    return fields


def cmd_serve(args: argparse.Namespace) -> int:
    from cluster.connection import ray_session
    from serve_apps.endpoint import Endpoint

    cfg = load_section(args.config, "serve", ServeConfig, overrides=serve_overrides(args))
    if not cfg.models:
        raise ConfigError(f"nothing to serve: give --model DIR or a config with serve.models (e.g. {SEED_EXAMPLE})")
    cluster = load_section(args.config, "cluster", ClusterConfig, overrides=config_overrides(args, "cluster"))
    with ray_session(cluster):
        endpoint = Endpoint(cfg)
        try:
            endpoint.start()  # a checkpoint that fails to start: the ones already deployed are retired first
            print(f"endpoint: {endpoint.url}/v1", flush=True)
            for name in cfg.models:
                print(f"  model: {name.name}", flush=True)
            print("Ctrl-C to stop", flush=True)
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            # Only what this command deployed: on a joined cluster a sweep or another `serve` may share Serve.
            print("shutting down the endpoint (only what this command deployed)", flush=True)
            endpoint.stop()
    return 0


# -- eval -------------------------------------------------------------------------------------------------------


# Flag names kept from before the flags were generated from EvalConfig (each also has its field's own name).
EVAL_FLAG_ALIASES = {"timeout_s": ["--timeout"], "first_token_timeout_s": ["--first-token-timeout"],
                     "max_request_s": ["--max-request-time"]}


def cmd_eval(args: argparse.Namespace) -> int:
    from eval_jobs.config import load_job_config
    from eval_jobs.evaluation import exit_code, run_job

    serve = serve_overrides(args)
    if args.model_dirs:
        serve.setdefault("port", 0)  # the job's own endpoint: any free port, so it never collides with a server
    overrides = {"cluster": config_overrides(args, "cluster"), "serve": serve, "eval": config_overrides(args, "eval")}
    return exit_code(run_job(load_job_config(args.config, overrides)))


def cmd_sweep(args: argparse.Namespace) -> int:
    from eval_jobs.sweep.config import load_sweep_config
    from eval_jobs.sweep.run import run_sweep

    overrides = {section: config_overrides(args, section) for section in ("cluster", "serve", "eval", "sweep")}
    return run_sweep(load_sweep_config(args.config, overrides)).exit_code


def cmd_convert(args: argparse.Namespace) -> int:
    from eval_jobs.sweep.checkpoints import from_path, mindrlhf_steps
    from eval_jobs.sweep.convert import convert, convert_to

    source = Path(args.source).expanduser()
    if args.strategy:
        steps = mindrlhf_steps(source, Path(args.strategy).expanduser())
        if args.step is not None:
            steps = [c for c in steps if c.step == args.step]
        if not steps:
            raise ConfigError(f"{source}: no step{'' if args.step is None else f' {args.step}'} saved by every "
                              "rank (expected rank_*/policy_model_rank_*-EPOCH_STEP.safetensors)")
        checkpoint = steps[-1]
    else:
        checkpoint = from_path(source)
        if not checkpoint.needs_conversion:
            raise ConfigError(f"{source}: already an HF directory; nothing to convert")
    base = Path(args.base).expanduser()
    if args.out:
        out = Path(args.out).expanduser()
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out}: exists and is not empty")
        print(convert_to(checkpoint, base, out))
    else:
        from cluster.paths import evalcluster_home

        print(convert(checkpoint, base, evalcluster_home() / "converted"))
    return 0


# -- models, datasets, cluster ----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from serve_apps import models

    if args.action == "path":
        print(models.model_path(args.names[0]))
        return 0
    for name in args.names or models.MODEL_NAMES:
        print(f"{name}: {models.prepare(name, force=args.force)}", flush=True)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.check:
        from eval_jobs.coverage.__main__ import run

        return run(args.search or "*", args.output)
    if not args.search:
        raise ConfigError("datasets: give --search NAME (or --check)")
    from eval_jobs.dataset_configs import find_dataset_configs

    found = find_dataset_configs(args.search, args.data_dir)
    if not found:
        print(f"no dataset config matches {args.search!r}")
        return 1
    for info in found:
        state = "error: " + info.error if info.error else ("present" if info.data_exists else "MISSING")
        print(f"{info.name}\n  config: {info.config_path}\n  abbr:   {info.abbr}\n"
              f"  data:   {info.data_path or '(none)'}  [{state}]")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from cluster import nodes

    if args.action == "up" and args.simulate:
        from cluster.simulate import simulate_up

        state = simulate_up(args.simulate)
    elif args.action == "up":
        npus = args.npus if args.npus in (None, "auto") else int(args.npus)
        state = nodes.cluster_up(head=not args.address, address=args.address, npus=npus, gpus=args.gpus,
                                 cpus=args.cpus, accelerator_type=args.accelerator_type,
                                 node_ip_address=args.node_ip_address, port=args.port,
                                 auth_mode=args.auth_mode, token_path=args.token_path)
    elif args.action == "down":
        stopped = nodes.cluster_down()
        print(f"stopped {len(stopped)} Ray node process(es)" if stopped else "no cluster started by evalcluster")
        return 0
    else:
        from cluster.status import cluster_status, format_status
        from serve_apps.ingress import served_model

        print(format_status(cluster_status(args.address, model_of=served_model)))
        return 0
    print(f"Ray at {state.gcs_address}  (dashboard {state.dashboard_url or '-'})")
    print("drivers and jobs use this environment:")
    for key, value in state.client_env().items():
        print(f"  export {key}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalcluster", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="one OpenAI endpoint for one or more checkpoints")
    p.add_argument("--config", help="YAML with a serve: section (and optionally cluster:)")
    add_checkpoint_flags(p)
    add_config_flags(p, ServeConfig, "serve", aliases={**ENDPOINT_FLAG_ALIASES, **ENGINE_FLAG_ALIASES})
    add_config_flags(p, ClusterConfig, "cluster", aliases=CLUSTER_FLAG_ALIASES)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="evaluate checkpoints on AISBench datasets")
    p.add_argument("config", nargs="?", help="job YAML (cluster:, serve:, eval:); flags override it")
    add_checkpoint_flags(p, model_flag="--model-dir")
    add_config_flags(p, EvalConfig, "eval", short_names=True, aliases=EVAL_FLAG_ALIASES)
    add_config_flags(p, ServeConfig, "serve", aliases=ENGINE_FLAG_ALIASES)
    add_config_flags(p, ClusterConfig, "cluster", aliases=CLUSTER_FLAG_ALIASES)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="evaluate many checkpoints of a training run, as many at once as fit")
    p.add_argument("config", help="sweep YAML (cluster:, serve:, eval:, sweep:)")
    add_config_flags(p, SweepConfig, "sweep", short_names=True)
    add_config_flags(p, EvalConfig, "eval", aliases={"output": ["--output"]})
    add_config_flags(p, ServeConfig, "serve", aliases=ENGINE_FLAG_ALIASES)
    add_config_flags(p, ClusterConfig, "cluster", aliases=CLUSTER_FLAG_ALIASES)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("convert", help="MindSpore .ckpt or MindRLHF shards -> an HF safetensors directory")
    p.add_argument("source", help=".ckpt file (or a directory holding one), or a MindRLHF save directory")
    p.add_argument("--base", required=True, help="HF model directory: config.json and tokenizer")
    p.add_argument("--out", help="output directory (default: the conversion cache; the path is printed)")
    p.add_argument("--strategy", help="MindRLHF: the merged parallel strategy file")
    p.add_argument("--step", type=int, help="MindRLHF: which saved step (default: the latest)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("models", help="build the shipped models (no hub needed)")
    p.add_argument("action", choices=["prepare", "path"])
    p.add_argument("names", nargs="*")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="find AISBench dataset configs and their data files")
    p.add_argument("--search", metavar="NAME", help="configs whose name contains NAME (or matches it as a glob)")
    p.add_argument("--data-dir")
    p.add_argument("--check", action="store_true", help="coverage: load, render and score a tiny data file in "
                   "each (matching) config's format with AISBench's own loader and evaluator")
    p.add_argument("--output", help="--check: write the Markdown table here (make coverage: docs/coverage.md)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("cluster", help="start/stop this machine's Ray node, or show the cluster")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--address", help="up: join this head (HOST:PORT); status: read this cluster")
    p.add_argument("--npus", help="NPUs this node declares ('auto': count /dev/davinci*)")
    p.add_argument("--gpus", type=int)
    p.add_argument("--cpus", type=float)
    p.add_argument("--accelerator-type")
    p.add_argument("--node-ip-address")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--auth-mode", choices=["token", "disabled"], default="token")
    p.add_argument("--token-path", help="joining node: the copy of the head's token file")
    p.add_argument("--simulate", metavar="NODES:NPUS", help="up: simulated NPU nodes, each a host of its own (network namespace; tests, development)")
    p.set_defaults(func=cmd_cluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _warn_key_in_argv(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
