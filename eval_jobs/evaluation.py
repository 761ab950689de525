"""One evaluation as a library: `run_job(job)` runs (or resumes) it and returns its summary table. The entry point is
`eval_jobs.run` (`python -m eval_jobs.run CONFIG.yaml`, the same locally and under `ray job submit`); the sweep and
the benchmarks call these functions directly.

config → cluster (connect) → serve (deploy the job's checkpoints, if any) → eval (queue + client actors, durable
store) → report (AISBench scoring, pandas summary). Running again on the same output directory resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cluster.connection import ray_session
from cluster.errors import ConfigError, HostLostError
from eval_jobs.client import SERVE_SCHEME, serve_endpoint
from eval_jobs.config import EvalConfig, JobConfig
from eval_jobs.datasets import EvalDataset, ServedCheckpoint, load_datasets
from eval_jobs.fingerprint import (
    ModelLists,
    checkpoint_identities,
    model_cards,
    models_url,
    sample_fingerprint,
)
from eval_jobs.llm_judge import attach_judgements, judge_dataset_name, judge_requests
from eval_jobs.model_config import load_model_config
from eval_jobs.multimodal import check_body_sizes
from eval_jobs.function_calls import function_call_request
from eval_jobs.multiturn import conversation_request
from eval_jobs.ppl import ppl_request, reuse_parts
from eval_jobs.prompts import aisbench_request_defaults
from eval_jobs.provenance import library_versions, provenance
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.report import print_summary, write_config, write_report
from eval_jobs.scoring import judge_frame, summarize
from eval_jobs.store import ResumePlan, RunDir, SampleStore, matching, plan_resume
from eval_jobs.tables import samples_frame
from eval_jobs.trackers import check_installed, open_trackers
from eval_jobs.viewer import write_viewer
from eval_jobs.work import ClientSettings, distribute

log = logging.getLogger("evalcluster.eval")
UNJUDGED = "unjudged"  # summary table attrs: answers of LLM-judged datasets without an ok judge answer


def build_requests(
    cfg: EvalConfig, endpoints: dict[str, str], datasets: list[EvalDataset],
    identities: dict[str, str] | None = None,
) -> list[SampleRequest]:
    """Every sample of the run (`endpoints`: model → where its requests go), dataset rows in order, repeats of a
    row together. With `identities` (model → checkpoint identity) each request carries its fingerprint."""
    requests = []
    defaults = aisbench_request_defaults(cfg.aisbench_model)
    # AISBench sends each prompt num_return_sequences times (its model config's repeats), each dataset row n times.
    model_repeats = load_model_config(cfg.aisbench_model).num_return_sequences or 1
    for model, endpoint in endpoints.items():
        for ds in datasets:
            rows = range(min(len(ds), cfg.limit or len(ds)))
            for index in rows:
                row_limit = ds.max_out_lens[index] if ds.max_out_lens else None
                row = {"row": ds.rows[index] if index < len(ds.rows) else None, "reference": ds.references[index]}
                for repeat in range(cfg.num_repeats or ds.n * model_repeats):
                    key = SampleKey(model, ds.name, index, repeat)
                    fields = {"model": model, **cfg.generation.request_fields(repeat, row_limit, defaults)}
                    if ds.ppl_options is not None:  # a question of a PPL dataset: one request per option
                        request = ppl_request(key, endpoint, ds.ppl_options[index], ds.ppl_labels or [], fields)
                    elif ds.conversations is not None:  # a conversation: one request per turn
                        request = conversation_request(key, endpoint, ds.conversations[index], fields)
                    elif ds.function_calls is not None:  # a BFCL question: one request per step
                        request = function_call_request(key, endpoint, ds.function_calls[index], fields)
                    else:
                        request = SampleRequest(key=key, endpoint=endpoint, body={**ds.request_input(index), **fields})
                    if identities is not None:
                        request.fingerprint = sample_fingerprint(request.body, row, identities[model])
                    requests.append(request)
    return requests


def client_settings(cfg: EvalConfig) -> ClientSettings:
    return ClientSettings(
        concurrency=cfg.concurrency, lease_size=cfg.lease_size, timeout_s=cfg.timeout_s,
        first_token_timeout_s=cfg.first_token_timeout_s, max_request_s=cfg.max_request_s,
        max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
        api_key=cfg.api_key.get_secret_value() if cfg.api_key else None,
    )


def served_models(endpoint: str, api_key: str | None) -> list[str]:
    try:
        return [card["id"] for card in model_cards(endpoint, api_key)]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise ConfigError(f"eval.endpoint: cannot list models at {models_url(endpoint)}: {exc}") from None


def simulator_models(endpoints: dict[str, str], api_key: str | None) -> list[str]:
    """The models whose engine is the simulator, by their model card (`metadata.simulator`): a run on one reports
    no scores, also when it reached the simulator through an endpoint rather than a `serve:` section of its own."""
    lists = ModelLists(api_key)
    return [model for model, endpoint in endpoints.items()
            if ((model_card(model, endpoint, lists) or {}).get("metadata") or {}).get("simulator") is True]


def model_card(model: str, endpoint: str, lists: ModelLists) -> dict | None:
    """`model`'s card from its engine (through its supervisor's handle) or from the endpoint's /v1/models."""
    try:
        if not endpoint.startswith(SERVE_SCHEME):
            return lists.card(model, endpoint)
        from ray import serve

        from serve_apps.ingress import ENGINE_DEPLOYMENT

        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, endpoint.removeprefix(SERVE_SCHEME))
        stream = handle.options(stream=True).forward.remote("GET", "/v1/models")
        head = next(iter(stream))
        stream.cancel()
        cards = json.loads(head["body"])["data"] if head.get("status") == 200 else []
        return next((c for c in cards if isinstance(c, dict) and c.get("id") == model), None)
    except Exception as exc:  # no card: the run is scored as any outside server's
        log.warning("%s: no model card at %s (%s)", model, endpoint, exc)
        return None


def output_dir(output: str) -> Path:
    """A relative `eval.output` is taken from $EVALCLUSTER_RUNS_ROOT (set by `cluster up` for its jobs), else from
    the current directory."""
    path = Path(output).expanduser()
    return path if path.is_absolute() else Path(os.environ.get("EVALCLUSTER_RUNS_ROOT", ".")) / path


def score(records: list[SampleResult], datasets: dict[str, EvalDataset],
          judge_records: list[SampleResult] = ()) -> pd.DataFrame:
    """The per-sample frame with AISBench's verdict on every sample (`scoring.judge_frame`): each dataset is
    scored on its own, one its evaluator cannot score is reported as failed, the others are not lost. Samples of
    LLM-judged datasets are scored on their judge's answers (`judge_records`, eval_jobs/llm_judge.py)."""
    frame = samples_frame(records)
    if any(ds.llm_judge is not None for ds in datasets.values()):
        frame = attach_judgements(frame, judge_records, datasets)
    return judge_frame(frame, datasets)


def data_plane(model: str) -> str:
    """Where a job sends `model`'s requests when this cluster serves it: its engine supervisors, by Serve handle."""
    from serve_apps.ingress import engine_app_name

    return serve_endpoint(engine_app_name(model))


def own_endpoint_models(url: str) -> list[str] | None:
    """The models this cluster serves if `url` is this cluster's own endpoint (its Serve proxy's port), else None.

    Then the job uses the data plane instead of the URL: the URL's loopback host exists only on the head, and every
    request through it would pass the one proxy and ingress that all replicas share."""
    from ray.serve.context import _get_global_client

    from serve_apps.endpoint import Endpoint

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None or urllib.parse.urlsplit(url).port != client.http_config.port:
        return None
    return Endpoint.served_models()


def served_checkpoint(job: JobConfig) -> ServedCheckpoint | None:
    """The directory of the checkpoint the job serves and evaluates (the judge aside), when there is one: datasets
    that count tokens with the model's tokenizer build their prompts with it. None with several (one tokenizer
    builds a dataset's prompts) or when the job evaluates an endpoint it did not start."""
    if job.serve is None or not job.serve.models:
        return None
    cfg = job.eval
    judge = cfg.judge.model if cfg.judge is not None and not cfg.judge.endpoint else None
    evaluated = [m for m in job.serve.models if (m.name in cfg.models if cfg.models else m.name != judge)]
    directories = {Path(m.model).expanduser().resolve() for m in evaluated}
    if len(directories) != 1 or not next(iter(directories)).is_dir():
        return None
    return ServedCheckpoint(next(iter(directories)), any(m.trust_remote_code for m in evaluated))


@contextlib.contextmanager
def endpoints_for(job: JobConfig) -> Iterator[tuple[dict[str, str], bool, str | None]]:
    """(model → where its requests go, simulated, where the judge's go): the job's own deployment, or the endpoint
    it was given. The judge (eval.judge) is on `eval.judge.endpoint` if set, else where the job's models are; with
    `eval.models` empty every model served is evaluated but the judge."""
    cfg = job.eval
    judge = cfg.judge.model if cfg.judge is not None and not cfg.judge.endpoint else None

    def others(names: list[str]) -> list[str]:
        return [m for m in names if m != judge]

    def judged_at(route, names: list[str], where: str) -> str | None:
        if cfg.judge is None:
            return None
        if cfg.judge.endpoint:
            return cfg.judge.endpoint
        if judge not in names:
            raise ConfigError(f"eval.judge.model = {judge!r}: not served at {where} (it serves {names}); "
                              "set eval.judge.endpoint for a judge elsewhere")
        return route(judge)

    if job.serve is None or not job.serve.models:
        own = own_endpoint_models(cfg.endpoint) if cfg.transport != "http" else None
        if own is not None:
            missing = sorted(set(cfg.models) - set(own))
            if missing:
                raise ConfigError(f"eval.models: {missing} are not served at {cfg.endpoint} (it serves {own})")
            yield {m: data_plane(m) for m in cfg.models or others(own)}, False, judged_at(data_plane, own, cfg.endpoint)
            return
        api_key = cfg.api_key.get_secret_value() if cfg.api_key else None
        listed = served_models(cfg.endpoint, api_key) if not cfg.models or judge else cfg.models
        yield ({m: cfg.endpoint for m in cfg.models or others(listed)}, False,
               judged_at(lambda m: cfg.endpoint, listed, cfg.endpoint))
        return
    from serve_apps.endpoint import Endpoint

    names = [m.name for m in job.serve.models]
    unknown = sorted(set(cfg.models) - set(names))
    if unknown:
        raise ConfigError(f"eval.models: {unknown} are not among serve.models {names}")
    if judge is not None and judge not in names:
        raise ConfigError(f"eval.judge.model = {judge!r}: not among serve.models {names}; "
                          "set eval.judge.endpoint for a judge elsewhere")
    endpoint = Endpoint(job.serve).start()
    try:
        route = (lambda m: endpoint.url) if cfg.transport == "http" else data_plane
        yield ({m: route(m) for m in cfg.models or others(names)}, job.serve.engine.kind == "sim",
               judged_at(route, names, "serve.models"))
    finally:
        # Stopped, not only emptied: an ingress left behind kept this job's key and body limit, and the next
        # endpoint on the cluster joined it without them (stop leaves whatever others still serve).
        try:
            endpoint.stop()
        except Exception as exc:  # the answers are in; a rerun or `serve` retires what is left
            log.warning("could not stop the job's endpoint: %s", exc)


def run_job(job: JobConfig) -> pd.DataFrame:
    """Run (or resume) one evaluation; returns the summary table also written to the run directory."""
    cfg = job.eval
    check_installed(cfg.trackers)  # before anything starts
    datasets = {ds.name: ds for name in cfg.datasets
                for ds in load_datasets(name, cfg.data_dir, cfg.aisbench_model, served_checkpoint(job))}
    check_judge(cfg, datasets)
    run_dir = RunDir(output_dir(cfg.output)).create()
    write_config(run_dir, job)
    store = SampleStore(run_dir.samples_jsonl)

    judge_plan: list[SampleRequest] = []
    with ray_session(job.cluster), endpoints_for(job) as (endpoints, simulated, judge_endpoint):
        if job.serve is not None and job.serve.api_key and not cfg.api_key:
            cfg = cfg.model_copy(update={"api_key": job.serve.api_key})
        api_key = cfg.api_key.get_secret_value() if cfg.api_key else None
        requests = build_requests(cfg, endpoints, list(datasets.values()), checkpoint_identities(endpoints, api_key))
        if job.serve is not None and job.serve.models and cfg.transport == "http":  # through the job's own ingress
            check_body_sizes(requests, job.serve.max_request_bytes)
        plan = plan_resume(requests, store.latest())
        record_run(run_dir, plan)
        log.info("%d samples: %s; to %s", len(requests), plan.summary(), sorted(set(endpoints.values())))
        lost: HostLostError | None = None
        with progress_bar(len(requests), plan.reused) as on_results:
            def record(results: list[SampleResult]) -> None:
                store.append(results)  # durable first; only then does a sample count
                on_results(results)

            try:
                # A failed PPL question keeps its answered options, a conversation its answered turns.
                todo = reuse_parts(plan.todo, store.latest())
                distribute(todo, client_settings(cfg), cfg.clients, record, watch=serving_watch(endpoints),
                           on_progress=store.append)
            except HostLostError as exc:
                lost = exc  # the report of what finished is written first; a rerun resumes
        # Asked once the answers are in, and only of the models that answered: a server that answers nothing
        # (its samples' errors say why) does not keep the run waiting for a model card as well.
        answered = {r.model for r in matching(store.latest(), requests) if r.status == "ok"}
        simulated = simulated or bool(simulator_models({m: e for m, e in endpoints.items() if m in answered},
                                                       api_key))
        if judge_endpoint is not None and lost is None:
            judge_plan, judge_key = judge_stage_requests(cfg, datasets, requests, judge_endpoint, store)
            try:
                run_judge_stage(cfg, judge_plan, judge_key, store)
            except HostLostError as exc:
                lost = exc  # as above: the judgements made so far are reported, a rerun sends the rest

    records = matching(store.latest(), requests)
    judge_records = matching(store.latest(), judge_plan)
    origin = provenance(requests, checkpoints_of(job, endpoints), {n: d.config_name for n, d in datasets.items()},
                        library_versions())
    if simulated:
        frame = samples_frame(records)
        table = write_report(run_dir, frame, None, simulated=True, config=job, origin=origin)
    else:
        frame = score(records, datasets, judge_records)
        table = write_report(run_dir, frame, summarize(frame, cfg.k), config=job, origin=origin)
    write_viewer(run_dir, with_references(frame, datasets), origin,
                 title="evalcluster samples" + (" (SIMULATED ENGINE: not model outputs)" if simulated else ""))
    trackers = open_trackers(cfg.trackers, tracker_logdir(cfg.logdir, run_dir), run_dir.root)
    try:
        trackers.log(table, steps={})
    finally:
        trackers.close()
    print_summary(table, simulated=simulated)
    # Judge requests that failed or never ran are retried by a rerun, like failed answers: the exit status says so.
    table.attrs[UNJUDGED] = len(judge_plan) - sum(r.status == "ok" for r in judge_records)
    print(f"{len(requests)} samples: {plan.summary()}")
    print(f"report: {run_dir.root.resolve()}")
    if lost is not None:
        raise lost
    return table


def check_judge(cfg: EvalConfig, datasets: dict[str, EvalDataset]) -> None:
    """An LLM-judged dataset needs eval.judge; the judge stage's dataset names must not be the run's own."""
    judged = [ds for ds in datasets.values() if ds.llm_judge is not None]
    if judged and cfg.judge is None:
        ds = judged[0]
        raise ConfigError(f"eval.datasets: {ds.config_name!r} ({ds.config_path}) has an LLM judge "
                          "(judge_infer_cfg): set eval.judge.model (--judge-model) to the served model that judges "
                          "its answers, and eval.judge.endpoint if another server serves it")
    for ds in judged:
        if judge_dataset_name(ds) in datasets:
            raise ConfigError(f"eval.datasets: {judge_dataset_name(ds)!r} is both a dataset of this run and the "
                              f"name of {ds.name!r}'s judge stage")


def judge_stage_requests(cfg: EvalConfig, datasets: dict[str, EvalDataset], requests: list[SampleRequest],
                         endpoint: str, store: SampleStore) -> tuple[list[SampleRequest], str | None]:
    """A judge request for every answered sample of the LLM-judged datasets (eval_jobs/llm_judge.py), and the key
    of the judge's endpoint (its own, else the evaluated endpoint's when the judge is on it)."""
    judge = cfg.judge
    api_key = judge.api_key or (cfg.api_key if not judge.endpoint else None)
    key = api_key.get_secret_value() if api_key else None
    identity = checkpoint_identities({judge.model: endpoint}, key)[judge.model]
    answers = matching(store.latest(), requests)
    judge_plan = []
    for ds in datasets.values():
        if ds.llm_judge is not None:
            judge_plan += judge_requests(ds, judge, [r for r in answers if r.dataset == ds.name], endpoint, identity)
    return judge_plan, key


def run_judge_stage(cfg: EvalConfig, judge_plan: list[SampleRequest], key: str | None, store: SampleStore) -> None:
    """Send the judge requests not judged before with the same inputs, through the same queue, client actors and
    store as the answers."""
    plan = plan_resume(judge_plan, store.latest())
    log.info("%d judge requests (%s): %s", len(judge_plan), cfg.judge.model, plan.summary())
    settings = dataclasses.replace(client_settings(cfg), api_key=key)
    endpoints = {cfg.judge.model: r.endpoint for r in judge_plan[:1]}
    with progress_bar(len(judge_plan), plan.reused, label="judge") as on_results:
        def record(results: list[SampleResult]) -> None:
            store.append(results)  # durable first, as the answers
            on_results(results)

        distribute(plan.todo, settings, cfg.clients, record, watch=serving_watch(endpoints))
    print(f"{len(judge_plan)} judge requests to {cfg.judge.model}: {plan.summary()}")


def with_references(frame: pd.DataFrame, datasets: dict[str, EvalDataset]) -> pd.DataFrame:
    """The per-sample frame with each row's reference answer (as the dataset file has it), for the viewer."""
    refs = [datasets[d].references[i] if d in datasets and i < len(datasets[d].references) else None
            for d, i in zip(frame["dataset"], frame["index"])] if len(frame) else []
    return frame.assign(reference=refs)


def checkpoints_of(job: JobConfig, endpoints: dict[str, str]) -> dict[str, dict]:
    """Served name → where its weights are (the job's own checkpoints), or the endpoint that served it."""
    if job.serve is not None and job.serve.models:
        return {m.name: {"path": m.model} for m in job.serve.models if m.name in endpoints}
    return {name: {"path": f"served at {job.eval.endpoint}"} for name in endpoints}


def tracker_logdir(logdir: str | None, run_dir: RunDir) -> Path:
    return Path(logdir).expanduser() if logdir else run_dir.root / "tensorboard"


def record_run(run_dir: RunDir, plan: ResumePlan) -> None:
    """Keep this run's config beside the earlier ones (config.yaml is only the latest) and a line saying what it
    reused and sent: a directory run with several configs shows which answers came from which."""
    run_dir.configs_dir.mkdir(exist_ok=True)
    number = len(list(run_dir.configs_dir.glob("run-*.yaml"))) + 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = run_dir.configs_dir / f"run-{number:03d}-{stamp}.yaml"
    shutil.copyfile(run_dir.config_yaml, kept)
    line = {"run": number, "started": stamp, "config": str(kept.relative_to(run_dir.root)), "reused": plan.reused,
            "sent": len(plan.todo), "new": plan.new, "changed": plan.changed, "failed_before": plan.failed}
    with run_dir.runs_jsonl.open("a") as f:
        f.write(json.dumps(line) + "\n")


def serving_watch(endpoints: dict[str, str]):
    """What notices a host loss that strands the checkpoints this cluster serves (None for outside endpoints)."""
    own = [model for model, endpoint in endpoints.items() if endpoint.startswith(SERVE_SCHEME)]
    if not own:
        return None
    from serve_apps.health import ServingWatch

    return ServingWatch(own).check


def exit_code(table: pd.DataFrame) -> int:
    """1 when some samples or judge requests failed (the report is partial; running again retries them), else 0."""
    failed = int(table.drop_duplicates(["model", "dataset"])["failures"].fillna(0).sum())
    if failed:
        print(f"{failed} samples failed; run the same command again to retry them", file=sys.stderr)
    unjudged = int(table.attrs.get(UNJUDGED, 0))
    if unjudged:
        print(f"{unjudged} judge requests failed or were not sent; run the same command again to retry them",
              file=sys.stderr)
    return 1 if failed or unjudged else 0


@contextlib.contextmanager
def progress_bar(total: int, already: int, label: str = "eval"):
    """A progress bar of finished samples: done/total, rate, failures and ETA."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.2f} samples/s"), TextColumn("failed {task.fields[failed]}"),
               TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("eval", total=total, completed=already, failed=0, rate=0.0)
        failed = 0

        def on_results(results: list[SampleResult]) -> None:
            nonlocal failed
            failed += sum(r.status != "ok" for r in results)
            progress.update(task, advance=len(results), failed=failed, rate=progress.tasks[0].speed or 0.0)

        yield on_results
