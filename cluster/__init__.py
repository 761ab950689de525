"""Where things run: Ray connection, NPU-tagged node bootstrap, placement planning and feasibility checks.

Ray reads its auth mode once, when it is first imported, so the mode is made explicit here, before anything in
this project imports ray: token auth with the token at $RAY_AUTH_TOKEN_PATH (default
<evalcluster home>/ray/auth_token), unless the environment already says otherwise (RAY_AUTH_MODE=disabled for a
throwaway cluster). Ray also decides at import whether it rewrites 127.0.0.1 to the machine's external address:
a driver that starts its own local Ray keeps loopback only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (docs/platform-notes.md).
Usage statistics are off: nothing leaves the machine.
"""

import os as _os

from cluster.paths import default_auth_token_path as _default_token_path

_os.environ.setdefault("RAY_AUTH_MODE", "token")
if _os.environ["RAY_AUTH_MODE"] == "token":
    _os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(_default_token_path()))
if not _os.environ.get("RAY_ADDRESS"):
    _os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts workers at niceness 15, but the Serve proxy, the ingress and the engine supervisors sit on every
# request's path: on a small node the engine (at normal priority) would starve them.
_os.environ.setdefault("RAY_worker_niceness", "0")
# Ray Serve's own throughput mode: user code on the replica's event loop (no thread hop per request), buffered
# request logs kept out of stderr (each line was also shipped to the driver), gRPC between proxy and replicas.
# Measured on bench/scale.py at 16 replicas: wall/engine-bound ideal 1.43 -> 1.13. Two of its switches stay off:
# handle routers keep their own loop (the mode's same-loop routers refuse a handle called from synchronous code,
# as Endpoint.engine_info does; measured no slower), and Serve's proxy stays (direct ingress would move the
# endpoint to Serve's fixed ports): one address, on the head, for every checkpoint.
_os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
_os.environ.setdefault("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "1")
_os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
