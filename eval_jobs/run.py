"""`python -m eval_jobs.run CONFIG.yaml`: the evaluation job, the same locally and under `ray job submit`.

A thin shell around `eval_jobs.evaluation.run_job`: arguments, logging, exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cluster.errors import run_command
from eval_jobs.config import load_job_config
from eval_jobs.evaluation import exit_code, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_jobs.run", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="job YAML with cluster:, serve: and eval: sections")
    parser.add_argument("--output", help="run directory (overrides eval.output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {"eval": {"output": args.output} if args.output else {}}
    return run_command(lambda: exit_code(run_job(load_job_config(args.config, overrides))))


if __name__ == "__main__":
    sys.exit(main())
