"""Benchmark: what each process on the evaluation path costs per request, and how many requests/s each path carries.

Three paths from evalcluster's own client actors (`eval_jobs.work.distribute`, 2 clients x 32 in flight) to a
zero-latency simulated engine, on a simulated cluster whose hosts are separate network namespaces:

- http:  client -> Serve's HTTP proxy -> ingress -> engine supervisor -> engine   (`eval.transport: http`)
- serve: client -> engine supervisor (Serve deployment handle) -> engine          (the data plane, `serve:engine:NAME`)
- bare:  client -> engine                                                          (the peer: nothing in between)

at 2 and 8 replicas (the bare side: as many engines of its own, started on the worker hosts and bound to their
addresses; requests spread over them round-robin). Every answer is 64 tokens streamed at stream_interval 16, as an
evaluation asks for them.

CPU is read from /proc/<pid>/stat (utime + stime) for every process of the cluster, by role (bench.proc_cpu),
between two points of each run: the first results the driver stores after the client actors were found (so
actor start-up and warm-up are left out), and the last. Requests/s is over the same window. "Path CPU" is every
process between the client actor and the engine's own server: supervisors for serve, proxy + ingress +
supervisors for http, nothing for bare. Targets (issue 14): no process on the data plane that all replicas share
(measured: the shared processes' CPU per request while the data plane runs, which is their idle cost), and
<= 4 ms of path CPU per request. Each size runs its three paths twice, the second time in reverse order, so drift
on this shared box falls on every path alike; figures are the sums over both rounds.

    python -m bench.path_capacity [--quick]
"""

from __future__ import annotations

import os

from cluster.simulate import SIM_ENV

# Before anything imports Ray: several Ray nodes on one machine need Ray's multi-node switch at import time.
os.environ.update(SIM_ENV)

import contextlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402
from ray import serve  # noqa: E402

from bench.common import LOG_DIR, QUICK, Result, eval_body, report, stop_group  # noqa: E402
from bench.proc_cpu import CpuLedger, actor_roles, cluster_pids, engine_pids, pids_titled  # noqa: E402
from cluster.paths import REPO_ROOT  # noqa: E402
from cluster.simulate import SimulatedCluster, simulated_cluster  # noqa: E402
from eval_jobs.records import SampleKey, SampleRequest, SampleResult  # noqa: E402
from eval_jobs.evaluation import data_plane  # noqa: E402
from eval_jobs.work import ClientSettings, distribute  # noqa: E402
from serve_apps.config import EngineConfig, ModelConfig, ServeConfig  # noqa: E402
from serve_apps.endpoint import Endpoint  # noqa: E402
from sim_engine import SimEngineConfig  # noqa: E402

BENCH = "path_capacity"
NODES, NPUS = 4, 2  # 8 replicas of tp 1 fill the cluster
SIZES = (2, 8)
TOKENS, STREAM_INTERVAL = 64, 16
CLIENTS, CONCURRENCY = 2, 32  # 64 in flight, as in facts.md's measurement of the path
# Per path, size and round: each window a few seconds at its path's rate, so 10 ms CPU ticks don't matter.
REQUESTS = {"http": 1000, "serve": 2000, "bare": 4000}
if QUICK:
    REQUESTS = {path: n // 4 for path, n in REQUESTS.items()}
ROUNDS = 1 if QUICK else 2
PATHS = ("http", "serve", "bare")
MODEL = "path-ckpt"
# + engine index. Each host has its own network stack; below the kernel's ephemeral range (32768-60999), where
# Ray's own servers take their ports, and below Ray's worker ports (10002-19999).
BARE_PORT = 7100
PATH_TARGET_MS = 4.0
IDLE_S = 3 if QUICK else 8  # the idle rate of every process, measured with nothing in flight
# Roles whose CPU is the path between the client actor and the engine's own server, per path.
PATH_ROLES = {"http": ("proxy", "ingress", "supervisor"), "serve": ("supervisor",), "bare": ()}
SHARED_ROLES = ("proxy", "ingress")  # one for all replicas
RETIRED_PIDS: set[int] = set()  # client and queue actors of earlier runs


@dataclass
class Window:
    """Requests finished and CPU used between the two snapshots of one or more runs."""

    requests: int = 0
    seconds: float = 0.0
    failed: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    ray_top: list[tuple[str, float]] = field(default_factory=list)

    def add(self, other: Window) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.failed += other.failed
        for role, s in other.cpu_s.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + s

    def ms_per_request(self, *roles: str, idle_per_s: dict[str, float] | None = None) -> float:
        """CPU milliseconds per request of `roles` together; with `idle_per_s`, only what they used above their
        idle rate (Serve's health checks and metrics, Ray's heartbeats: time-bound, not request-bound)."""
        used = sum(self.cpu_s.get(r, 0.0) - (idle_per_s or {}).get(r, 0.0) * self.seconds for r in roles)
        return 1000 * used / self.requests

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def run_window(sim: SimulatedCluster, requests: list[SampleRequest], fixed: dict[str, list[int]]) -> Window:
    """Send `requests` through fresh client actors; the CPU of every role from the driver's first batch of stored
    results to its last, and the results stored in between. Opening at the first batch leaves the clients'
    start-up out; what the requests in flight then had already cost is left out too (at most 64 requests'
    partial work, a few percent of the window)."""
    settings = ClientSettings(concurrency=CONCURRENCY, lease_size=4, timeout_s=120, max_retries=0, backoff_s=0)
    stored = 0
    failed = 0
    ledger: CpuLedger | None = None
    opened: tuple[float, int] | None = None
    window = Window()

    def on_results(results: list[SampleResult]) -> None:
        nonlocal stored, failed, ledger, opened
        stored += len(results)
        failed += sum(r.status != "ok" for r in results)
        if ledger is None:  # clients running: find them by their process titles (fast), once all have started
            # The previous run's actors may not be dead yet (ray.kill returns at once): never take them again.
            cluster = cluster_pids(sim)
            found = {"client": pids_titled(cluster - RETIRED_PIDS, "EvalClient"),
                     "queue": pids_titled(cluster - RETIRED_PIDS, "WorkQueue")}
            if len(found["client"]) < CLIENTS or len(found["queue"]) != 1:
                return
            RETIRED_PIDS.update(found["client"] + found["queue"])
            ledger = CpuLedger({**fixed, **found}, cluster)
            ledger.start()
            opened = (time.perf_counter(), stored)
        if stored == len(requests) and opened is not None:
            window.cpu_s = ledger.stop()
            window.seconds = time.perf_counter() - opened[0]
            window.requests = stored - opened[1]
            # Where "ray" (every process with no role of its own) went: printed, so a surprise can be followed.
            window.ray_top = ledger.top("ray")

    distribute(requests, settings, CLIENTS, on_results)
    if not window.requests:
        raise RuntimeError(f"{len(requests)} requests were too few to open a measuring window")
    window.failed = failed
    return window


def requests_to(endpoints: list[str], n: int) -> list[SampleRequest]:
    """`n` requests, spread round-robin over `endpoints`."""
    return [SampleRequest(key=SampleKey(MODEL, "bench", i, 0), endpoint=endpoints[i % len(endpoints)],
                          body=eval_body(MODEL, [{"role": "user", "content": f"question {i}"}], TOKENS,
                                         stream_interval=STREAM_INTERVAL))
            for i in range(n)]


@contextlib.contextmanager
def bare_engines(sim: SimulatedCluster, count: int) -> Iterator[tuple[list[str], list[int]]]:
    """`count` simulated engines started as the supervisor starts them, but bound to their worker host's own
    address so client actors on any host reach them; (urls, pids). Stopped by process group on exit."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs, urls = [], []
    try:
        for i in range(count):
            ip = sim.worker_ips[i % len(sim.worker_ips)]
            argv = [sys.executable, "-m", "sim_engine", "--served-model-name", MODEL, "--ttft-s", "0",
                    "--tpot-s", "0", "--output-tokens", str(TOKENS), "--host", ip, "--port", str(BARE_PORT + i)]
            with open(LOG_DIR / f"path-capacity-bare-{i}.log", "wb") as log:
                procs.append(subprocess.Popen(sim.host(ip).command(argv), env=env, cwd=REPO_ROOT, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            urls.append(f"http://{ip}:{BARE_PORT + i}")
        for url, proc in zip(urls, procs):
            _wait_up(url, proc)
        yield urls, [p.pid for p in procs]
    finally:
        for proc in procs:
            stop_group(proc)


def _wait_up(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until `url` answers /health (from this machine, which reaches every host's address)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bare engine for {url} exited with {proc.returncode}; see {LOG_DIR}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"bare engine at {url} not up after {timeout_s:.0f} s")


def measure_size(sim: SimulatedCluster, endpoint: Endpoint, replicas: int, bare_urls: list[str],
                 bare_pids: list[int]) -> tuple[dict[str, Window], dict[str, float]]:
    """Deploy `replicas`, measure every process's idle rate, then each path ROUNDS times."""
    endpoint.add_models([ModelConfig(model=f"/ckpt/{MODEL}", num_replicas=replicas)])
    found = actor_roles(sim, MODEL)
    fixed = {"proxy": found["proxy"], "ingress": found["ingress"], "supervisor": found["supervisor"],
             "engine": engine_pids(found["supervisor"]), "bare_engine": bare_pids}
    assert len(fixed["supervisor"]) == replicas == len(fixed["engine"]), fixed
    idle = CpuLedger(fixed, cluster_pids(sim))
    idle.start()
    time.sleep(IDLE_S)
    idle_per_s = {role: s / IDLE_S for role, s in idle.stop().items()}
    print(f"{replicas} replicas, idle: " + ", ".join(f"{r} {1000 * v:.1f}" for r, v in idle_per_s.items())
          + " ms/s", flush=True)
    targets = {"http": [endpoint.url], "serve": [data_plane(MODEL)], "bare": bare_urls[:replicas]}
    windows = {path: Window() for path in PATHS}
    for round_ in range(ROUNDS):
        for path in PATHS if round_ % 2 == 0 else reversed(PATHS):
            w = run_window(sim, requests_to(targets[path], REQUESTS[path]), fixed)
            print(f"{replicas} replicas, {path:5s}: {w.requests} requests in {w.seconds:.1f} s = {w.rate:.0f}/s; "
                  + ", ".join(f"{r} {1000 * s / w.requests:.2f}" for r, s in w.cpu_s.items()) + " ms/request"
                  + (f"; {w.failed} FAILED" if w.failed else ""), flush=True)
            print("    busiest of the rest: " + ", ".join(f"{t} {1000 * s / w.requests:.2f}" for t, s in w.ray_top))
            windows[path].add(w)
    return windows, idle_per_s


def results_for(replicas: int, windows: dict[str, Window], idle_per_s: dict[str, float]) -> list[Result]:
    out = []
    bare = windows["bare"]
    for path in PATHS:
        w = windows[path]
        note = f"{w.requests} requests measured ({REQUESTS[path]} sent x {ROUNDS}), {TOKENS} tokens at " \
               f"stream_interval {STREAM_INTERVAL}, {CLIENTS * CONCURRENCY} in flight, zero-latency simulator"
        label = {"http": "HTTP endpoint", "serve": "data plane", "bare": "bare engine"}[path]
        failed = f", {w.failed} FAILED" if w.failed else ""
        breakdown = ", ".join(f"{r} {w.ms_per_request(r):.2f}" for r in PATH_ROLES[path])
        if path != "bare":
            above_idle = w.ms_per_request(*PATH_ROLES[path], idle_per_s=idle_per_s)
            out.append(Result(BENCH, f"{label}, {replicas} replicas: path CPU per request",
                              w.ms_per_request(*PATH_ROLES[path]), "ms",
                              target=f"<= {PATH_TARGET_MS:g}" if path == "serve" else "",
                              note=f"{breakdown} ms; {above_idle:.2f} above their idle rate{failed}"))
        engine_role = "bare_engine" if path == "bare" else "engine"
        out.append(Result(BENCH, f"{label}, {replicas} replicas: client actor CPU per request",
                          w.ms_per_request("client"), "ms",
                          note=f"engine {w.ms_per_request(engine_role):.2f}, queue {w.ms_per_request('queue'):.2f}, "
                               f"Ray's own processes {w.ms_per_request('ray'):.2f} "
                               f"({w.ms_per_request('ray', idle_per_s=idle_per_s):.2f} above idle), driver "
                               f"{w.ms_per_request('driver'):.2f} ms/request{failed}"))
        everything = [role for role in w.cpu_s if role != ("engine" if path == "bare" else "bare_engine")]
        out.append(Result(BENCH, f"{label}, {replicas} replicas: CPU of every process per request, above idle",
                          w.ms_per_request(*everything, idle_per_s=idle_per_s), "ms",
                          note="clients, path, engines, queue, Ray's own processes, driver: what the whole "
                               "cluster spends on one request"))
        out.append(Result(BENCH, f"{label}, {replicas} replicas: requests/s", w.rate, "req/s", note=note))
    serve_w = windows["serve"]
    out += [
        Result(BENCH, f"data plane, {replicas} replicas: CPU of shared processes (proxy, ingress) above idle, "
               "per request", serve_w.ms_per_request(*SHARED_ROLES, idle_per_s=idle_per_s), "ms", target="<= 0.1",
               note=f"{serve_w.ms_per_request(*SHARED_ROLES):.2f} ms with their idle cost: none of the path is theirs"),
        Result(BENCH, f"{replicas} replicas: requests/s data plane/bare", serve_w.rate / bare.rate,
               note="same clients, same engines' code, same run"),
        Result(BENCH, f"{replicas} replicas: requests/s HTTP endpoint/bare", windows["http"].rate / bare.rate),
    ]
    return out


def main() -> None:
    engine = EngineConfig(kind="sim", platform="ascend", cpus_per_replica=0, startup_timeout_s=300,
                          sim=SimEngineConfig(ttft_s=0, tpot_s=0, output_tokens=TOKENS))
    results: list[Result] = []
    with simulated_cluster(nodes=NODES, npus_per_node=NPUS, cpus_per_node=2, head_cpus=2) as sim:
        # Bound to the head's own address (not its 127.0.0.1), so client actors on every host reach the proxy. Open
        # on purpose: the address exists only on this machine's simulated hosts (a key check would cost microseconds).
        endpoint = Endpoint(ServeConfig(host=sim.head_ip, port=0, allow_unauthenticated=True, engine=engine)).start()
        try:
            with bare_engines(sim, max(SIZES)) as (bare_urls, bare_pids):
                for replicas in SIZES:
                    results += results_for(replicas, *measure_size(sim, endpoint, replicas, bare_urls, bare_pids))
        finally:
            serve.shutdown()
    report(results)


if __name__ == "__main__":
    main()
