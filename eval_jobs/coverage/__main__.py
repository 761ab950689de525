"""`python -m eval_jobs.coverage [--search PATTERN] [--output FILE]`: the coverage table (see check.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_jobs.coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--search", default="*", metavar="PATTERN", help="only configs matching this name")
    parser.add_argument("--output", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    return run(args.search, args.output)


def run(pattern: str, output: str | None) -> int:
    """Check the configs, print one line per config, write the table; exit 0 (refusals are results)."""
    from eval_jobs.coverage.check import check_config, markdown
    from eval_jobs.dataset_configs import find_dataset_configs

    names = sorted({(i.name, i.config_path) for i in find_dataset_configs(pattern, Path("/nonexistent"))})
    if not names:
        print(f"no dataset config matches {pattern!r}")
        return 1
    results = []
    for name, path in names:
        r = check_config(name, path)
        results.append(r)
        flags = "".join("LRS"[i] if ok else "-" for i, ok in enumerate((r.loads, r.renders, r.scores)))
        print(f"{flags} {r.config}: {r.reason or 'ok'}", flush=True)
    table = markdown(results)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(table, encoding="utf-8")
        print(f"coverage table: {output}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
