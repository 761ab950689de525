"""Resume that notices what changed: fingerprints of request body, dataset row and checkpoint files decide what a
rerun sends and what the report shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from ray import serve
from ray.serve.context import _get_global_client

from eval_jobs.config import JobConfig
from eval_jobs.fingerprint import sample_fingerprint
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.evaluation import run_job
from eval_jobs.store import RunDir, matching, plan_resume
from eval_jobs.sweep.checkpoints import from_path
from eval_jobs.sweep.scheduler import checkpoint_identity_of
from serve_apps.checkpoint_id import checkpoint_identity
from serve_apps.endpoint import INGRESS_APP, Endpoint
from shared import API_KEY

DEMO = "demo_arith_gen_0_shot_chat_prompt"
BODY = {"model": "m", "messages": [{"role": "user", "content": "1+1?"}], "max_tokens": 8, "temperature": 0}
ROW = {"row": {"question": "1+1?", "answer": "2"}, "reference": "2"}


def fake_checkpoint(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    (root / "README.md").write_text("not part of what the engine loads")
    return root


def test_checkpoint_identity_follows_the_weight_files_not_the_name(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "step_400")
    first = checkpoint_identity(str(ckpt))
    assert first.startswith(f"dir:{ckpt}:") and checkpoint_identity(str(ckpt)) == first
    (ckpt / "README.md").write_text("edited")  # not loaded by the engine: same checkpoint
    assert checkpoint_identity(str(ckpt)) == first
    stat = (ckpt / "model.safetensors").stat()
    os.utime(ckpt / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten
    assert checkpoint_identity(str(ckpt)) != first
    assert checkpoint_identity("org/name") == "hub:org/name"
    # A sweep computes an HF checkpoint's identity the way its engine supervisor does.
    assert checkpoint_identity_of(from_path(ckpt)) == checkpoint_identity(str(ckpt))


def test_every_input_of_an_answer_changes_its_fingerprint() -> None:
    base = sample_fingerprint(BODY, ROW, "dir:/c:1")
    assert sample_fingerprint(dict(BODY), dict(ROW), "dir:/c:1") == base
    for body in ({**BODY, "max_tokens": 16}, {**BODY, "temperature": 0.6}, {**BODY, "seed": 1},
                 {**BODY, "messages": [{"role": "user", "content": "1+2?"}]}):
        assert sample_fingerprint(body, ROW, "dir:/c:1") != base
    assert sample_fingerprint(BODY, {**ROW, "reference": "3"}, "dir:/c:1") != base  # a changed data file
    assert sample_fingerprint(BODY, ROW, "dir:/c:2") != base  # other weights behind the same name
    # How the answer travels is not what it says.
    transport = {**BODY, "stream": True, "stream_interval": 4, "stream_options": {"include_usage": True}}
    assert sample_fingerprint(transport, ROW, "dir:/c:1") == base


def record(key: SampleKey, fingerprint: str | None, status: str = "ok") -> SampleResult:
    return SampleResult(model=key.model, dataset=key.dataset, index=key.index, repeat=key.repeat, status=status,
                        endpoint="x", prompt=[], started_at=0.0, fingerprint=fingerprint)  # type: ignore[arg-type]


def test_plan_resume_sends_new_changed_and_failed_and_reports_only_matching() -> None:
    keys = [SampleKey("m", "d", i, 0) for i in range(5)]
    requests = [SampleRequest(key=k, endpoint="x", body={}, fingerprint="new") for k in keys]
    latest = {keys[0]: record(keys[0], "new"), keys[1]: record(keys[1], "old"),
              keys[2]: record(keys[2], "new", "failed"), keys[3]: record(keys[3], None)}
    plan = plan_resume(requests, latest)
    assert [r.key for r in plan.todo] == keys[1:]
    assert (plan.reused, plan.new, plan.changed, plan.failed) == (1, 1, 2, 1)
    assert "1 samples reused" in plan.summary() and "4 to send" in plan.summary()
    assert [r.key for r in matching(latest, requests)] == [keys[0], keys[2]]


def sim_job(ckpt: Path, data_dir: Path, output: Path) -> JobConfig:
    # The session's key: when the shared endpoint fixture is up, this job joins its Serve and its ingress, which
    # lists models only to callers with that key (without it, the readiness check waited out its deadline).
    return JobConfig(
        serve={"port": 0, "api_key": API_KEY,
               "engine": {"kind": "sim", "cpus_per_replica": 0, "startup_timeout_s": 120,
                          "sim": {"output_tokens": 4}},
               "models": [{"model": str(ckpt), "served_model_name": "ckpt"}]},
        eval={"datasets": [DEMO], "data_dir": str(data_dir), "limit": 5, "clients": 1, "concurrency": 4,
              "timeout_s": 30, "output": str(output)},
    )


def test_new_weights_behind_the_same_name_are_evaluated_again(ray_cluster, data_dir: Path, tmp_path: Path) -> None:
    """The job deploys a checkpoint directory (the simulator stands in for the engine: only what is sent counts
    here), is run again unchanged (nothing sent), then after the weights are rewritten in place (everything sent:
    the engine supervisor's identity of the files changed, the served name did not)."""
    ckpt = fake_checkpoint(tmp_path / "step_400")
    output = tmp_path / "run"
    run_job(sim_job(ckpt, data_dir, output))
    run_job(sim_job(ckpt, data_dir, output))
    (ckpt / "model.safetensors").write_bytes(b"\1" * 128)  # training wrote step_400 again
    run_job(sim_job(ckpt, data_dir, output))
    lines = [json.loads(line) for line in RunDir(output).runs_jsonl.read_text().splitlines()]
    assert [(r["sent"], r["reused"], r["changed"]) for r in lines] == [(5, 0, 0), (0, 5, 0), (5, 0, 5)]
    samples = pd.read_parquet(RunDir(output).samples_parquet)
    assert len(samples) == 5 and (samples["status"] == "ok").all()
    assert samples["fingerprint"].nunique() == 5  # one per sample, all of the new weights
    # The job stopped its endpoint: an ingress left behind with its settings was joined by the next endpoint.
    if _get_global_client(raise_if_no_controller_running=False) is not None:  # else Serve went with it
        assert "ckpt" not in Endpoint.served_models()
        assert Endpoint.served_models() or INGRESS_APP not in serve.status().applications
