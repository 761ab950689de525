"""Benchmarks: each one measures evalcluster against a peer doing the same work on the same machine, in the same
run, and reports the ratio. Absolute numbers on a shared 2-core box drift by tens of percent from run to run; a
ratio against a peer measured minutes (or seconds, interleaved) apart mostly cancels that drift.

    python -m bench.serving_overhead    # the endpoint vs the very engine it fronts
    python -m bench.client_vs_peers     # run_job vs a minimal client vs the ais_bench CLI, on a real model
    python -m bench.client_rate         # requests/s the client actors sustain against an instant engine
    python -m bench.path_capacity       # CPU per request of every process on the HTTP, data-plane and bare paths
    python -m bench.scale               # wall time vs the engine-bound ideal, 1 to 32 replicas on 8 hosts
    python -m bench.run [NAME ...]      # all of them (or the named), appending a dated table to bench/history/

Add `--quick` (or BENCH_QUICK=1) for a reduced-scale smoke run. Nothing here asserts on time: targets are
printed next to results, and a miss is a finding, not a failure.
"""

import os as _os

# Benchmarks always run on a Ray of their own: joining a cluster named in the environment would load it, and
# Endpoint.shutdown() would stop *its* Serve. Dropped here, before `cluster` reads it at import (bench.common).
_os.environ.pop("RAY_ADDRESS", None)
