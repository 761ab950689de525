"""Dynamic work distribution: one queue actor holds the samples, client actors lease small batches of them.

The driver is the only writer of the run's store: it takes finished results from the queue, appends them durably,
and only then counts them. Clients hand their answers back with their next lease. A client that dies loses nothing
but its leases and the answers it had not handed back yet: those samples go back to the queue (at once when the
driver sees the death, or when its lease expires: clients renew the leases of requests still streaming, so only a
client that stopped renewing loses them) and are sent again; a result that arrives for a sample already finished
elsewhere is dropped and clears any lease on it, so every key is reported once and the queue always drains.
A sample of several requests in a row (a conversation, eval_jobs/multiturn.py) also hands back its progress after
each request (`progress`): a lease given back resumes from it, and the driver makes it durable before the sample's
final record.
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
from eval_jobs.client import SERVE_SCHEME, Bounds, Transports, failed_result, send_chat
from eval_jobs.function_calls import is_function_call_request, send_function_calls
from eval_jobs.multiturn import is_conversation, send_conversation
from eval_jobs.ppl import reuse_parts, send_ppl
from eval_jobs.records import SampleKey, SampleRequest, SampleResult

log = logging.getLogger(__name__)

# How often an idle client asks the queue again while other clients still hold leases that may come back.
IDLE_POLL_S = 0.5
# How many times the driver restarts one client's run after the client actor died, before it gives up.
MAX_CLIENT_RESTARTS = 3
CLIENT_PREFIX = "eval-client-"
# How long the driver waits for every client actor to be up before work is leased (past it, those up start).
CLIENT_START_WAIT_S = 120.0
# A lease not renewed for this long expires and its sample goes back to the queue. Clients renew the leases of
# requests still in flight every quarter of it, so an answer may stream for hours and keep its lease, while a
# client that stops renewing (wedged, or on a host that vanished) loses its samples within a minute.
LEASE_TTL_S = 60.0


@dataclass(frozen=True)
class ClientSettings:
    concurrency: int
    lease_size: int
    timeout_s: float  # the idle bound of one attempt (eval.timeout_s)
    max_retries: int
    backoff_s: float
    api_key: str | None = None
    first_token_timeout_s: float | None = None  # None: timeout_s
    max_request_s: float | None = None  # None: no total cap
    lease_ttl_s: float = LEASE_TTL_S

    def bounds(self) -> Bounds:
        return Bounds(idle_s=self.timeout_s, first_token_s=self.first_token_timeout_s, total_s=self.max_request_s)

    @property
    def renew_every_s(self) -> float:
        return self.lease_ttl_s / 4


class Leases:
    """The queue's state, apart from Ray so that its rules can be tested on their own (`clock` is injectable).

    Every key is pending, leased to one client until an expiry its renewals push back, or finished. A key is
    finished once, by the first result for it; later results for it are dropped and clear any lease on it, so a
    finished key is never leased again and `remaining()` reaches 0.
    """

    def __init__(self, requests: Sequence[SampleRequest], ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._requests = {r.key: r for r in requests}
        self._pending: collections.deque[SampleKey] = collections.deque(self._requests)
        self._held: dict[SampleKey, tuple[str, float]] = {}  # key → (client, expires at)
        self._finished: set[SampleKey] = set()
        self._results: list[SampleResult] = []
        self._progress: list[SampleResult] = []  # unfinished samples' records so far, for the driver
        self._ttl_s = ttl_s
        self._clock = clock

    def lease(self, client: str, n: int, finished: Sequence[SampleResult] = ()) -> list[SampleRequest]:
        """Record `finished` (what the client completed since its last call), then lease it up to `n` more."""
        self.record(client, finished)
        self.expire()
        batch: list[SampleRequest] = []
        expires = self._clock() + self._ttl_s
        while self._pending and len(batch) < n:
            key = self._pending.popleft()
            if key in self._finished or key in self._held:
                continue  # finished by a late answer while it waited, or a stale second entry
            self._held[key] = (client, expires)
            batch.append(self._requests[key])
        return batch

    def record(self, client: str, results: Sequence[SampleResult]) -> None:
        for result in results:
            key = result.key
            if key in self._finished or key not in self._requests:
                self._held.pop(key, None)  # a duplicate: nobody needs to answer it any more
                continue
            holder = self._held.get(key, (None, 0.0))[0]
            if holder not in (None, client) and result.status != "ok":
                continue  # a late failure from a lease that expired; the client holding it now may still succeed
            self._held.pop(key, None)  # whoever holds it: its answer would be a duplicate (renew tells it)
            self._finished.add(key)
            self._results.append(result)

    def progress(self, client: str, partial: SampleResult) -> bool:
        """Keep what `client` has answered of a sample it holds (a failed record of its parts so far): the sample's
        request now carries those parts, so whoever is leased it next sends only the rest, and the driver gets the
        record (`take`). False, and nothing kept, when `client` no longer holds the sample."""
        key = partial.key
        if key in self._finished or self._held.get(key, (None,))[0] != client:
            return False
        self._requests[key] = reuse_parts([self._requests[key]], {key: partial})[0]
        self._progress.append(partial)
        return True

    def renew(self, client: str, keys: Sequence[SampleKey]) -> list[SampleKey]:
        """Push back the expiry of `client`'s leases on `keys`; returns the keys it no longer holds (expired and
        leased again, or finished by someone else), whose requests it can stop."""
        expires, lost = self._clock() + self._ttl_s, []
        for key in keys:
            if self._held.get(key, (None,))[0] == client:
                self._held[key] = (client, expires)
            else:
                lost.append(key)
        return lost

    def release(self, client: str) -> int:
        """Give back every sample `client` holds (it died). Returns how many."""
        return self._requeue([key for key, (holder, _) in self._held.items() if holder == client])

    def expire(self) -> int:
        now = self._clock()
        return self._requeue([key for key, (_, expires) in self._held.items() if expires < now])

    def take_results(self) -> tuple[list[SampleResult], int]:
        """Finished results not yet taken, and how many samples are still unfinished."""
        results, self._results = self._results, []
        return results, self.remaining()

    def take(self) -> tuple[list[SampleResult], list[SampleResult], int]:
        """(progress records, finished results, how many unfinished), taken at once: a sample's progress is always
        handed over with or before its final record, so the driver, writing progress first, never writes it after
        the final one (where it would supersede it)."""
        progress, self._progress = self._progress, []
        return (progress, *self.take_results())

    def remaining(self) -> int:
        return len(self._requests) - len(self._finished)

    def _requeue(self, keys: list[SampleKey]) -> int:
        for key in keys:
            del self._held[key]
        self._pending.extendleft(reversed(keys))  # first, in their order: they have waited longest
        return len(keys)


@ray.remote(num_cpus=0)
class WorkQueue(Leases):
    """`Leases` as the run's queue actor (on the driver's host)."""


@ray.remote(num_cpus=0)
class EvalClient:
    """Keeps up to `concurrency` requests in flight, leasing more as slots free up, until the queue is empty."""

    def __init__(self, name: str, settings: ClientSettings, endpoints: Sequence[str] = ()):
        self._name = name
        self._settings = settings
        self._endpoints = list(endpoints)  # where this run's requests go: warmed up before the first lease

    def ready(self) -> str:
        return self._name

    async def run(self, queue) -> int:
        s = self._settings
        sent = 0
        in_flight: dict[asyncio.Task, SampleKey] = {}
        finished: list[SampleResult] = []
        async with Transports(s.concurrency, s.api_key, router_on_this_loop=True) as session:
            await session.warm_up(self._endpoints)
            renewed_at = time.monotonic()
            while True:
                free = s.concurrency - len(in_flight)
                # Results go back with the next lease: one call to the queue per turn instead of two per sample
                # (at ~500 samples/s the queue actor was a third of a core).
                batch = []
                if free:  # always so when there are finished results: their tasks freed their slots
                    batch = await queue.lease.remote(self._name, min(free, s.lease_size), finished)
                    finished = []
                for request in batch:
                    in_flight[asyncio.create_task(self._one(session, request, queue))] = request.key
                sent += len(batch)
                if batch and len(in_flight) < s.concurrency:
                    continue  # fill every slot before waiting
                if in_flight and time.monotonic() - renewed_at >= s.renew_every_s:
                    renewed_at = time.monotonic()
                    await self._renew(queue, in_flight)
                if in_flight:
                    done, _ = await asyncio.wait(in_flight, timeout=IDLE_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                    finished = [task.result() for task in done]
                    for task in done:
                        del in_flight[task]
                elif await queue.remaining.remote() == 0:
                    return sent
                else:
                    await asyncio.sleep(IDLE_POLL_S)  # others hold the rest; their leases may come back

    async def _renew(self, queue, in_flight: dict[asyncio.Task, SampleKey]) -> None:
        """Keep the leases of requests still streaming; stop the requests whose samples are no longer ours."""
        lost = set(await queue.renew.remote(self._name, list(in_flight.values())))
        for task, key in list(in_flight.items()):
            if key in lost:
                task.cancel()
                del in_flight[task]
        if lost:
            log.warning("%s: %d leases were lost (expired or finished elsewhere); their requests stopped",
                        self._name, len(lost))

    async def _one(self, session, request: SampleRequest, queue) -> SampleResult:
        s = self._settings
        try:
            # A sample of many requests (a PPL question: one per option; a conversation: one per turn) is sent by
            # its own module; a conversation's answered turns go to the queue before its next turn is sent.
            if is_conversation(request):
                return await send_conversation(
                    session, request, bounds=s.bounds(), max_retries=s.max_retries, backoff_s=s.backoff_s,
                    on_turn=lambda partial: queue.progress.remote(self._name, partial))
            if is_function_call_request(request):  # a BFCL question: its answered steps go to the queue too
                return await send_function_calls(
                    session, request, bounds=s.bounds(), max_retries=s.max_retries, backoff_s=s.backoff_s,
                    on_step=lambda partial: queue.progress.remote(self._name, partial))
            send = send_ppl if request.parts else send_chat
            return await send(session, request, bounds=s.bounds(), max_retries=s.max_retries, backoff_s=s.backoff_s)
        except Exception as exc:  # send_chat records failures itself; this guards the actor against its bugs
            return failed_result(request, f"internal error in the client ({type(exc).__name__}): {exc}")


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
    on_progress: Callable[[list[SampleResult]], None] | None = None,
) -> int:
    """Run `requests` through `num_clients` client actors; `on_results` gets every finished batch (it must make them
    durable before returning), `on_progress` the records of samples answered in part so far (a conversation's
    turns: failed records a later final one supersedes), always before their final records. Returns, once every
    request has a result, how many times a client actor died and was restarted. `watch` is called between turns
    and may raise to end the run (a host was lost and what it served cannot come back): results so far are kept."""
    if not requests:
        return 0
    # The queue lives on the driver's host: it is the run's state, and should any other host die, it survives.
    queue = WorkQueue.options(scheduling_strategy=_this_node()).remote(requests, settings.lease_ttl_s)
    run = uuid.uuid4().hex[:8]

    placement = client_placement(requests)

    def start_client(name: str, restart: int = 0):
        # Named, so operators see them in `ray list actors`.
        actor_name = f"{CLIENT_PREFIX}{run}-{name}" + (f"-r{restart}" if restart else "")
        return EvalClient.options(name=actor_name, scheduling_strategy=placement).remote(name, settings, endpoints)

    endpoints = sorted({r.endpoint for r in requests})
    clients = {f"client-{i}": start_client(f"client-{i}") for i in range(num_clients)}
    # Every client up before any leases work: the first one up would otherwise take the first leases alone while
    # the others start (a second or more each on a loaded host), and the run would start at its pace.
    ray.wait([c.ready.remote() for c in clients.values()], num_returns=len(clients), timeout=CLIENT_START_WAIT_S)
    runs = {clients[name].run.remote(queue): name for name in clients}
    restarts: collections.Counter[str] = collections.Counter()
    try:
        while True:
            progress, results, remaining = ray.get(queue.take.remote())
            if progress and on_progress:
                on_progress(progress)  # first: see Leases.take
            if results:
                on_results(results)
            if remaining == 0:
                results, _ = ray.get(queue.take_results.remote())
                if results:
                    on_results(results)
                return sum(restarts.values())
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
