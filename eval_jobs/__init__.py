"""Who asks and who scores: dataset loading (AISBench), work queue, client actors, store, scoring, reports."""

import os as _os

from cluster.paths import evalcluster_home as _home

# bfcl_eval, which AISBench imports with any of its inferencers, creates `result/` and `score/` under
# $BFCL_PROJECT_ROOT at import, by default beside its own package in site-packages
# (bfcl_eval/constants/eval_config.py). evalcluster never uses them; keep them out of the environment.
_os.environ.setdefault("BFCL_PROJECT_ROOT", str(_home() / "bfcl"))
