"""What produced a report, shown at the top of every report page: checkpoints, datasets, the generation settings
actually sent, versions, and when."""

from __future__ import annotations

import html
import importlib.metadata
import json
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

from eval_jobs.records import SampleRequest
from eval_jobs.trackers import step_of

NOT_SETTINGS = ("messages", "model", "prompt")  # per-sample fields, not settings


def provenance(
    requests: Sequence[SampleRequest],
    checkpoints: Mapping[str, Mapping[str, Any]],
    dataset_configs: Mapping[str, str],
    versions: Mapping[str, Any],
) -> dict[str, Any]:
    """`checkpoints`: served name → {path, step} as known (step from the name when not); `dataset_configs`: dataset
    → AISBench config it came from. The generation settings are read from the request bodies themselves."""
    sent = sorted({_settings(r.body) for r in requests})
    return {
        "checkpoints": {name: {"path": info.get("path"), "step": info.get("step", step_of(name))}
                        for name, info in checkpoints.items()},
        "datasets": dict(dataset_configs),
        "generation settings sent": [dict(s) for s in sent] if len(sent) != 1 else dict(sent[0]),
        "versions": {k: v for k, v in versions.items() if k != "recorded_at"},
        "written": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _settings(body: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v if not isinstance(v, (dict, list)) else repr(v)) for k, v in body.items()
                        if k not in NOT_SETTINGS))


def provenance_html(origin: Mapping[str, Any] | None) -> str:
    """The "what produced this" block every report page opens with."""
    if not origin:
        return ""
    items = "".join(f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(_shown(value))}</dd>"
                    for key, value in origin.items())
    return f'<dl class="provenance">{items}</dl>'


def provenance_md(origin: Mapping[str, Any] | None) -> list[str]:
    if not origin:
        return []
    return [f"- **{key}**: `{_shown(value)}`" for key, value in origin.items()] + [""]


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


# Distribution names recorded in versions.json, by the key they are recorded under.
VERSIONED_PACKAGES = {
    "evalcluster": "evalcluster", "ray": "ray", "ais_bench": "ais-bench-benchmark", "pandas": "pandas",
    "torch": "torch", "numpy": "numpy", "pyarrow": "pyarrow", "httpx": "httpx", "pydantic": "pydantic",
}  # fmt: skip


def library_versions(engine_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Python, platform and the versions of the libraries a score depends on (None: not installed here).

    The engine (vLLM / vllm-mindspore) lives in its own environment: pass what it reports as `engine_info`.
    """
    versions: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for key, dist in VERSIONED_PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    versions["engine"] = dict(engine_info) if engine_info else None
    versions["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return versions
