"""Packing checkpoint deployments into the cluster's device budget, evaluating each as soon as it is up.

Each checkpoint goes through: (convert, a CPU Ray task started as soon as it is found) → wait for room → deploy on
the shared endpoint → evaluate (the same queue and client actors as `eval_jobs.run`) → retire. The driver reads what is
free once, at the start, and from then on keeps its own ledger of what its deployments hold, per node: Ray reserves
a replica's devices only once the replica is scheduled, so reading Ray's free resources right after a deploy would
count the same devices twice. Placement is largest first (then step order), best fit, with backfill: when the
next checkpoint does not fit yet, a smaller one that does goes first, onto the node it leaves fullest, so whole
nodes stay free for whole-node replicas. A checkpoint's replicas are pinned to the node the ledger chose, or Ray,
placing by itself, could fragment the nodes so that a tp-8 replica fits nowhere.

Everything that happens is appended to the sweep directory's `events.jsonl` (found, converted, deploy, ready,
retired, failed, skipped, scoring, scored), the record of what ran when.

A retired checkpoint's samples go to the `CheckpointScorer` (`scores.py`), which judges them in its own thread:
the loop only hands them over (`loop_stall_s` in the `scoring` event is what that cost the loop).

Stopping (Ctrl-C, SIGTERM): the loop sets `stop`; each checkpoint's thread leaves its wait for the engine or its
client actors within a second (samples in flight are abandoned, not recorded), and retires its deployment; pending
conversions are cancelled. What was stored stays, and the same command resumes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from cluster.errors import HostLostError, InfeasiblePlacementError
from cluster.planner import Ledger, NodeCapacity, ReplicaNeeds, check_feasible, live_nodes, replica_needs
from eval_jobs.datasets import EvalDataset
from eval_jobs.evaluation import build_requests, client_settings, data_plane
from eval_jobs.fingerprint import checkpoint_identities
from eval_jobs.llm_judge import judge_requests
from eval_jobs.ppl import reuse_parts
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.store import SampleStore, matching, plan_resume
from eval_jobs.sweep.checkpoints import Checkpoint, Watcher
from eval_jobs.sweep.config import SweepJobConfig
from eval_jobs.sweep.convert import convert_remote
from eval_jobs.sweep.scores import CheckpointScorer
from eval_jobs.work import distribute
from serve_apps.checkpoint_id import checkpoint_identity, files_identity
from serve_apps.config import EngineConfig, ModelConfig
from serve_apps.endpoint import Endpoint
from serve_apps.errors import WaitCancelled
from serve_apps.health import ServingWatch

log = logging.getLogger("evalcluster.sweep")

POLL_S = 0.5  # how often the loop looks at conversions, free room and the watcher when nothing finishes
MAX_DEPLOYMENTS = 256  # checkpoints deployed at once unless sweep.max_concurrent says fewer


class EventLog:
    """Append-only JSON lines: one object per event, flushed at once (the sweep's timeline, read by tests)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, event: str, checkpoint: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "event": event, "checkpoint": checkpoint, **fields}, default=str)
        with self._lock, self.path.open("a") as f:
            f.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def peak_devices(events: Sequence[dict[str, Any]]) -> float:
    """The most devices the sweep's deployments held at once, from deploy / retired events in time order."""
    held, peak, devices = 0.0, 0.0, {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["event"] == "deploy":
            devices[e["checkpoint"]] = e["devices"]
            held += e["devices"]
            peak = max(peak, held)
        elif e["event"] == "retired":
            held -= devices.pop(e["checkpoint"], 0.0)
    return peak


@dataclass
class Planned:
    """A checkpoint with everything needed to deploy it."""

    checkpoint: Checkpoint
    engine: EngineConfig
    needs: ReplicaNeeds
    num_replicas: int
    conversion: Any = None  # ObjectRef of the conversion task, None for an HF directory
    model_dir: Path | None = None


def checkpoint_identity_of(checkpoint: Checkpoint) -> str:
    """What a checkpoint is, as files, computed here (before it is deployed or converted): an HF directory the way
    its engine supervisor computes it, a .ckpt or MindRLHF step by the files conversion reads."""
    if not checkpoint.needs_conversion:
        return checkpoint_identity(str(checkpoint.source))
    return f"{checkpoint.kind}:{checkpoint.source}:{files_identity(checkpoint.files())}"


def _largest_first(p: Planned) -> tuple[float, float, str]:
    """Pending order: most devices per checkpoint first (they are the hardest to place), then step order."""
    return (-p.needs.device_count * p.num_replicas, *p.checkpoint.sort_key())


class SweepStopped(Exception):
    """Raised in a checkpoint's thread when the sweep is being stopped (ends `distribute` between its turns)."""


class Sweep:
    """Runs one sweep on the connected cluster against `endpoint` (already started); `scorer` scores each
    checkpoint once its samples are done."""

    def __init__(self, job: SweepJobConfig, endpoint: Endpoint, datasets: Sequence[EvalDataset],
                 store: SampleStore, events: EventLog, scorer: CheckpointScorer) -> None:
        self.job = job
        self.endpoint = endpoint
        self.datasets = list(datasets)
        self.store = store
        self.events = events
        self.scorer = scorer
        self.stop = threading.Event()  # set on Ctrl-C / SIGTERM: every thread winds down and retires
        self.failed: dict[str, str] = {}
        self.checkpoints: dict[str, int | None] = {}  # every checkpoint planned: name → step
        self.sources: dict[str, str] = {}  # name → where its weights came from
        self.requests: dict[str, list[SampleRequest]] = {}  # every checkpoint planned: name → its samples
        # The store's latest record of every sample, read once at the start and kept current by _record: what
        # resume and scoring need, without reading the whole store again at every deploy and retirement.
        self.latest: dict[SampleKey, SampleResult] = {}
        self._store_lock = threading.Lock()
        self._serve_lock = threading.Lock()  # deploys and deletes go one at a time; waiting for readiness does not
        self._judge_identity: str | None = None

    # -- planning --------------------------------------------------------------------------------------------

    def plan(self, checkpoint: Checkpoint, nodes: Sequence[NodeCapacity]) -> Planned:
        engine = self.job.serve.engine
        if checkpoint.platform and checkpoint.platform != engine.platform:
            engine = engine.model_copy(update={"platform": checkpoint.platform})
        tp = checkpoint.tensor_parallel_size or self.job.sweep.serving.tensor_parallel_size
        needs = replica_needs(engine.platform, tp, engine.cpus_per_replica)
        replicas = self.job.sweep.serving.num_replicas
        check_feasible(checkpoint.name, needs, replicas, nodes)
        self.checkpoints[checkpoint.name] = checkpoint.step
        self.sources[checkpoint.name] = str(checkpoint.source)
        return Planned(checkpoint, engine, needs, replicas,
                       model_dir=None if checkpoint.needs_conversion else checkpoint.source)

    def model_config(self, planned: Planned) -> ModelConfig:
        serving = self.job.sweep.serving.model_dump()
        if planned.checkpoint.tensor_parallel_size:
            serving["tensor_parallel_size"] = planned.checkpoint.tensor_parallel_size
        return ModelConfig(model=str(planned.model_dir), served_model_name=planned.checkpoint.name, **serving)

    def requests_of(self, checkpoint: Checkpoint) -> list[SampleRequest]:
        """Every sample of `checkpoint`, fingerprinted with what its files are now (a retrained `step_400` is another
        checkpoint under the same name); kept for the report, which shows only answers of these fingerprints."""
        identity = checkpoint_identity_of(checkpoint)
        name = checkpoint.name
        requests = build_requests(self.job.eval, {name: data_plane(name)}, self.datasets, {name: identity})
        self.requests[name] = requests
        return requests

    # -- the loop --------------------------------------------------------------------------------------------

    def run(self, checkpoints: Sequence[Checkpoint], watcher: Watcher | None = None) -> None:
        """Evaluate every checkpoint (and, with a watcher, every new one) and return when all are done.

        Checkpoints no node could ever hold fail before anything is deployed. One checkpoint's failure (its
        conversion or its engine) is recorded and the others go on. KeyboardInterrupt (Ctrl-C, SIGTERM) stops
        the sweep within seconds: deployments retired, conversions cancelled, then it propagates.
        """
        nodes = live_nodes()
        planned = [self.plan(c, nodes) for c in checkpoints]  # infeasible: raises here, nothing deployed yet
        self._remove_leftovers(planned)
        # The budget is what is free now (other apps keep theirs); from here on the ledger tracks the sweep's own.
        ledger = Ledger.of(live_nodes())
        self.latest = self.store.latest()
        pending: list[Planned] = []
        for p in planned:
            self._enqueue(p, pending)
        pending.sort(key=_largest_first)
        if watcher:
            watcher.mark_known(c.name for c in checkpoints)
        active: dict[concurrent.futures.Future, Planned] = {}
        max_active = self.job.sweep.max_concurrent or MAX_DEPLOYMENTS
        # One thread per deployed checkpoint: each mostly waits (for its engine, for its client actors).
        with concurrent.futures.ThreadPoolExecutor(max_active, thread_name_prefix="sweep") as pool:
            try:
                self._loop(pool, nodes, ledger, pending, active, max_active, watcher)
            except BaseException:
                # Ctrl-C (or a bug): every thread sees `stop` within a second, abandons its samples in flight and
                # retires its deployment; leaving the `with` then waits only for that.
                self.stop.set()
                names = [p.checkpoint.name for p in active.values()]
                self.events.write("stop", "", deployed=names)
                for p in pending:
                    if p.conversion is not None:
                        ray.cancel(p.conversion, force=True)
                log.warning("stopping: retiring %d deployment(s)", len(names))
                with self._serve_lock:  # all at once; each thread's own retirement then finds its app gone
                    self.endpoint.remove_models(names)
                raise

    def _loop(self, pool: concurrent.futures.ThreadPoolExecutor, nodes: Sequence[NodeCapacity], ledger: Ledger,
              pending: list[Planned], active: dict[concurrent.futures.Future, Planned], max_active: int,
              watcher: Watcher | None) -> None:
        last_activity = time.monotonic()
        next_scan = 0.0
        while True:
            if watcher and time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self.job.sweep.poll_s
                for c in watcher.poll():
                    last_activity = time.monotonic()
                    self.events.write("found", c.name, source=str(c.source), step=c.step)
                    try:
                        self._enqueue(self.plan(c, nodes), pending)
                    except Exception as exc:  # an infeasible checkpoint found later: fail it, go on
                        self._fail(c.name, exc)
                pending.sort(key=_largest_first)
            for p in list(pending):
                if len(active) >= max_active:
                    break
                state = self._conversion_state(p)
                if state == "failed":
                    pending.remove(p)
                if state != "done":
                    continue
                placed = ledger.reserve(p.checkpoint.name, p.needs, p.num_replicas)
                if placed is None:
                    continue  # no room yet; a later, smaller checkpoint may still fit (backfill)
                pending.remove(p)
                self.events.write("deploy", p.checkpoint.name, devices=p.needs.device_count * p.num_replicas,
                                  device_key=p.needs.device_key, replica=dict(p.needs.resources), nodes=placed)
                # Replicas go where the ledger put them (one node: pinned there; Ray places them otherwise).
                node = ledger.addresses[placed[0]] if len(set(placed)) == 1 else None
                active[pool.submit(self._evaluate, p, node)] = p
            if not active and not pending:
                idle = self.job.sweep.idle_timeout_s
                if watcher is None or (idle is not None and time.monotonic() - last_activity >= idle):
                    return
            if not active:
                time.sleep(POLL_S)  # waiting for a conversion or the watcher: nothing to wait on below
                continue
            done, _ = concurrent.futures.wait(list(active), timeout=POLL_S,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                t0 = time.monotonic()
                p = active.pop(future)
                name = p.checkpoint.name
                ledger.release(name)
                last_activity = t0
                try:
                    future.result()
                except HostLostError as exc:
                    self._replan_after_loss(p, exc, ledger, pending)
                    continue  # deployed again later; scored when it is done
                except Exception as exc:
                    self._fail(name, exc)
                self.scorer.submit(name, self.records_of(name))
                self.events.write("scoring", name, loop_stall_s=round(time.monotonic() - t0, 6))

    def _replan_after_loss(self, p: Planned, exc: HostLostError, ledger: Ledger, pending: list[Planned]) -> None:
        """A host `p` was deployed on died and took its replicas: deploy it again on the hosts that are left (its
        finished samples stay; the rest are sent again), or fail it if they can never hold it."""
        name = p.checkpoint.name
        alive = live_nodes()
        gone = ledger.keep_only(alive)
        self.events.write("host-lost", name, reason=str(exc), hosts=gone)
        try:
            check_feasible(name, p.needs, p.num_replicas, alive)
        except InfeasiblePlacementError as infeasible:
            self._fail(name, HostLostError(f"{exc}; {infeasible}"))
            return
        log.warning("%s: %s; deploying it again on the remaining hosts", name, exc)
        pending.append(p)
        pending.sort(key=_largest_first)

    def _remove_leftovers(self, planned: Sequence[Planned]) -> None:
        """Deployments of these checkpoints left by a sweep that was killed: retire them, so their devices count
        as free and nothing holds them forever (the killed sweep cannot)."""
        ours = {p.checkpoint.name for p in planned}
        for name in sorted(ours & set(self.endpoint.served_models())):
            log.info("%s: retiring the deployment a previous run left behind", name)
            self.endpoint.remove_model(name)
            self.events.write("retired", name, reason="left behind by a previous run")

    def _enqueue(self, p: Planned, pending: list[Planned]) -> None:
        name = p.checkpoint.name
        if not plan_resume(self.requests_of(p.checkpoint), self.latest).todo:
            self.events.write("skipped", name, reason="every sample already evaluated with the same fingerprint")
            self.scorer.submit(name, self.records_of(name))
            return
        if p.checkpoint.needs_conversion:
            p.conversion = convert_remote(p.checkpoint, Path(self.job.sweep.base), self.job.sweep.cache_dir())
        pending.append(p)

    def _conversion_state(self, p: Planned) -> str:
        """"done" once `p` has a model directory, "waiting" while its conversion runs, "failed" (recorded) if it
        raised."""
        if p.model_dir is not None:
            return "done"
        ready, _ = ray.wait([p.conversion], timeout=0)
        if not ready:
            return "waiting"
        try:
            p.model_dir = Path(ray.get(p.conversion))
        except Exception as exc:
            self._fail(p.checkpoint.name, exc)
            return "failed"
        self.events.write("converted", p.checkpoint.name, model_dir=str(p.model_dir))
        return "done"

    def _fail(self, name: str, exc: BaseException) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.failed[name] = reason
        self.events.write("failed", name, reason=reason)
        log.error("%s failed: %s", name, reason)

    # -- one checkpoint, in a worker thread --------------------------------------------------------------------

    def _evaluate(self, p: Planned, node_address: str | None) -> None:
        name = p.checkpoint.name
        model = self.model_config(p)
        serving = ServingWatch([name])

        def watch() -> None:  # distribute calls this between turns; raising ends it and kills its actors
            if self.stop.is_set():
                raise SweepStopped(name)
            serving.check()

        try:
            if self.stop.is_set():
                return
            with self._serve_lock:
                self.endpoint.add_models([model], engine=p.engine, wait=False, node_address=node_address)
            try:
                self.endpoint.wait_ready([name], timeout_s=p.engine.startup_timeout_s + 60, cancel=self.stop)
            except InfeasiblePlacementError as exc:
                # Pinned to a host that died while it was being deployed there: the host was lost (deployed again
                # elsewhere, as after a loss mid-evaluation), not a checkpoint that can never fit.
                if node_address is not None and node_address not in {n.address for n in live_nodes()}:
                    raise HostLostError(f"host {node_address} was lost while {name} was being deployed there: "
                                        f"{exc}") from exc
                raise
            self.events.write("ready", name)
            requests = self.requests[name]
            with self._store_lock:
                plan = plan_resume(requests, self.latest)
                todo = reuse_parts(plan.todo, self.latest)  # a failed PPL question keeps its answered options
            log.info("%s: ready; %d samples: %s", name, len(requests), plan.summary())
            self.events.write("resume", name, reused=plan.reused, sent=len(plan.todo), new=plan.new,
                              changed=plan.changed, failed_before=plan.failed)
            distribute(todo, client_settings(self.job.eval), self.job.eval.clients, self._record, watch=watch,
                       on_progress=self._record)  # a conversation's answered turns, durable as they come
        except (SweepStopped, WaitCancelled):
            log.info("%s: stopped; samples in flight abandoned", name)
            raise
        finally:
            with self._serve_lock:
                self.endpoint.start_removing([name])
            # Outside the lock: a replica lost with its host takes Serve 20 s to give up on, and the other
            # checkpoints' deploys and retirements must not wait for it. Its devices are released once this returns.
            self.endpoint.wait_removed([name])
            self.events.write("retired", name)
            log.info("%s: retired", name)
        self._judge(name, watch)

    def _judge(self, name: str, watch: Callable[[], None]) -> None:
        """The judge requests of `name`'s answers to LLM-judged datasets (eval_jobs/llm_judge.py), sent to
        eval.judge.endpoint once the checkpoint is retired, through the same client actors and store; they join
        its planned samples, so its scores are made from them and a rerun sends only what is missing."""
        judged = [ds for ds in self.datasets if ds.llm_judge is not None]
        if not judged or self.job.serve.engine.kind == "sim":  # a simulator's answers are never scored
            return
        cfg = self.job.eval
        key = cfg.judge.api_key.get_secret_value() if cfg.judge.api_key else None
        if self._judge_identity is None:  # the judge's model card, asked once per sweep
            self._judge_identity = checkpoint_identities({cfg.judge.model: cfg.judge.endpoint}, key)[cfg.judge.model]
        with self._store_lock:
            answers = matching(self.latest, self.requests[name])
        plan = [request for ds in judged for request in judge_requests(
            ds, cfg.judge, [r for r in answers if r.dataset == ds.name], cfg.judge.endpoint, self._judge_identity)]
        with self._store_lock:
            self.requests[name] = self.requests[name] + plan
            resume = plan_resume(plan, self.latest)
        log.info("%s: %d judge requests (%s): %s", name, len(plan), cfg.judge.model, resume.summary())
        self.events.write("judge", name, reused=resume.reused, sent=len(resume.todo))
        settings = dataclasses.replace(client_settings(cfg), api_key=key)
        distribute(resume.todo, settings, cfg.clients, self._record, watch=watch)

    def records_of(self, name: str) -> list[SampleResult]:
        """The latest records of `name`'s planned samples (this config, the checkpoint's current files)."""
        with self._store_lock:
            return matching(self.latest, self.requests.get(name, []))

    def _record(self, results: list[SampleResult]) -> None:
        with self._store_lock:
            self.store.append(results)  # durable before it counts, as in eval_jobs.evaluation
            for r in results:
                self.latest[r.key] = r

