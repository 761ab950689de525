"""Dynamic work distribution: one queue actor holds the samples, client actors lease small batches of them.

The driver is the only writer of the run's store: it takes finished results from the queue, appends them durably,
and only then counts them. Clients hand their answers back with their next lease. A client that dies loses nothing
but its leases and the answers it had not handed back yet: those samples go back to the queue (at once when the
driver sees the death, or when the lease expires) and are sent again; a result that arrives for a sample already
finished elsewhere is dropped, so every key is reported once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.net import is_loopback
from eval_jobs.client import SERVE_SCHEME, Transports, send_chat
from eval_jobs.records import SampleKey, SampleRequest, SampleResult

log = logging.getLogger(__name__)

# How often an idle client asks the queue again while other clients still hold leases that may come back.
IDLE_POLL_S = 0.5
# How many times the driver restarts one client's run after the client actor died, before it gives up.
MAX_CLIENT_RESTARTS = 3
CLIENT_PREFIX = "eval-client-"


@dataclass(frozen=True)
class ClientSettings:
    concurrency: int
    lease_size: int
    timeout_s: float
    max_retries: int
    backoff_s: float
    api_key: str | None = None

    def lease_timeout_s(self) -> float:
        """Longest a healthy client can hold a sample: every attempt timing out, plus the (capped) backoffs."""
        return (self.max_retries + 1) * (self.timeout_s + 60.0) + 30.0


@ray.remote(num_cpus=0)
class WorkQueue:
    def __init__(self, requests: list[SampleRequest], lease_timeout_s: float):
        self._pending: collections.deque[SampleRequest] = collections.deque(requests)
        self._leases: dict[SampleKey, tuple[str, float, SampleRequest]] = {}
        self._finished: set[SampleKey] = set()
        self._results: list[SampleResult] = []
        self._lease_timeout_s = lease_timeout_s

    def lease(self, client: str, n: int, finished: Sequence[SampleResult] = ()) -> list[SampleRequest]:
        """Record `finished` (what the client completed since its last call), then lease it up to `n` more."""
        self._record(finished)
        self._requeue(lambda holder, leased_at: time.monotonic() - leased_at > self._lease_timeout_s)
        batch = [self._pending.popleft() for _ in range(min(n, len(self._pending)))]
        now = time.monotonic()
        for request in batch:
            self._leases[request.key] = (client, now, request)
        return batch

    def _record(self, results: Sequence[SampleResult]) -> None:
        for result in results:
            if result.key in self._finished:
                continue  # finished already by a client that took over an expired lease
            self._finished.add(result.key)
            self._leases.pop(result.key, None)
            self._results.append(result)

    def release(self, client: str) -> int:
        """Give back every sample `client` holds (it died). Returns how many."""
        return self._requeue(lambda holder, leased_at: holder == client)

    def take_results(self) -> tuple[list[SampleResult], int]:
        """Finished results not yet taken, and how many samples are still unfinished."""
        results, self._results = self._results, []
        return results, len(self._pending) + len(self._leases)

    def remaining(self) -> int:
        return len(self._pending) + len(self._leases)

    def _requeue(self, expired: Callable[[str, float], bool]) -> int:
        keys = [key for key, (holder, leased_at, _) in self._leases.items() if expired(holder, leased_at)]
        for key in keys:
            self._pending.appendleft(self._leases.pop(key)[2])
        return len(keys)


@ray.remote(num_cpus=0)
class EvalClient:
    """Keeps up to `concurrency` requests in flight, leasing more as slots free up, until the queue is empty."""

    def __init__(self, name: str, settings: ClientSettings):
        self._name = name
        self._settings = settings

    async def run(self, queue) -> int:
        s = self._settings
        sent = 0
        in_flight: set[asyncio.Task] = set()
        finished: list[SampleResult] = []
        async with Transports(s.concurrency, s.api_key) as session:
            while True:
                free = s.concurrency - len(in_flight)
                # Results go back with the next lease: one call to the queue per turn instead of two per sample
                # (at ~500 samples/s the queue actor was a third of a core).
                batch = []
                if free:  # always so when there are finished results: their tasks freed their slots
                    batch = await queue.lease.remote(self._name, min(free, s.lease_size), finished)
                    finished = []
                for request in batch:
                    in_flight.add(asyncio.create_task(self._one(session, request)))
                sent += len(batch)
                if batch and len(in_flight) < s.concurrency:
                    continue  # fill every slot before waiting
                if in_flight:
                    done, in_flight = await asyncio.wait(in_flight, timeout=IDLE_POLL_S,
                                                         return_when=asyncio.FIRST_COMPLETED)
                    finished = [task.result() for task in done]
                elif await queue.remaining.remote() == 0:
                    return sent
                else:
                    await asyncio.sleep(IDLE_POLL_S)  # others hold the rest; their leases may come back

    async def _one(self, session, request: SampleRequest) -> SampleResult:
        s = self._settings
        return await send_chat(session, request, timeout_s=s.timeout_s, max_retries=s.max_retries,
                               backoff_s=s.backoff_s)


def client_placement(requests: Sequence[SampleRequest]) -> Any:
    """Where client actors run. SPREAD over the hosts, so no one host's network carries every request, unless a
    request goes to a loopback URL: that address exists only on this driver's host, so every client runs here."""
    if any(_is_loopback_url(r.endpoint) for r in requests):
        return _this_node()
    return "SPREAD"


def _this_node() -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _is_loopback_url(endpoint: str) -> bool:
    return not endpoint.startswith(SERVE_SCHEME) and is_loopback(urllib.parse.urlsplit(endpoint).hostname or "")


def distribute(
    requests: list[SampleRequest],
    settings: ClientSettings,
    num_clients: int,
    on_results: Callable[[list[SampleResult]], None],
    watch: Callable[[], None] | None = None,
) -> None:
    """Run `requests` through `num_clients` client actors; `on_results` gets every finished batch (it must make them
    durable before returning). Returns when every request has a result. `watch` is called between turns and may
    raise to end the run (a host was lost and what it served cannot come back): results so far are kept."""
    if not requests:
        return
    # The queue lives on the driver's host: it is the run's state, and should any other host die, it survives.
    queue = WorkQueue.options(scheduling_strategy=_this_node()).remote(requests, settings.lease_timeout_s())
    run = uuid.uuid4().hex[:8]

    placement = client_placement(requests)

    def start_client(name: str, restart: int = 0):
        # Named, so operators see them in `ray list actors`.
        actor_name = f"{CLIENT_PREFIX}{run}-{name}" + (f"-r{restart}" if restart else "")
        return EvalClient.options(name=actor_name, scheduling_strategy=placement).remote(name, settings)

    clients = {f"client-{i}": start_client(f"client-{i}") for i in range(num_clients)}
    runs = {clients[name].run.remote(queue): name for name in clients}
    restarts: collections.Counter[str] = collections.Counter()
    try:
        while True:
            results, remaining = ray.get(queue.take_results.remote())
            if results:
                on_results(results)
            if remaining == 0:
                results, _ = ray.get(queue.take_results.remote())
                if results:
                    on_results(results)
                return
            if watch:
                watch()
            ready, _ = ray.wait(list(runs), num_returns=len(runs), timeout=IDLE_POLL_S)
            for ref in ready:
                name = runs.pop(ref)
                try:
                    ray.get(ref)
                    continue  # the queue ran dry for this client
                except (RayActorError, RayTaskError) as exc:
                    restarts[name] += 1
                    given_back = ray.get(queue.release.remote(name))
                    log.warning("%s failed (%s); %d samples back in the queue", name, type(exc).__name__, given_back)
                    if restarts[name] > MAX_CLIENT_RESTARTS:
                        raise
                    ray.kill(clients[name])
                    clients[name] = start_client(name, restarts[name])
                runs[clients[name].run.remote(queue)] = name
            if not runs:
                # Every client finished but samples remain: they were leased by a client that vanished silently.
                runs = {clients[name].run.remote(queue): name for name in clients}
    finally:
        for actor in clients.values():
            ray.kill(actor)
        ray.kill(queue)
