"""Image, video and audio input (AISBench's `MMPromptTemplate` configs: textvqa, mmmu, videomme, vocalsound, ...).

Rendering needs nothing of its own: the dataset's loader, the template and the chat model's `get_request_body` (all
AISBench's, `eval_jobs/prompts.py`) make each row's content parts exactly as `ais_bench` sends them:

    [{"type": "image_url", "image_url": {"url": "file:///data/textvqa/img0.jpg"}},      # *_gen configs
     {"type": "text", "text": "What colour? Answer the question using a single word or phrase."}]
    ... {"url": "data:image/jpeg;base64,/9j/4AAQ..."}                                  # *_gen_base64 configs

The loaders decide which: path configs keep the file's path (tsv sets first write their base64 images out as files
next to the data file), base64 configs read the file and inline it. A `file://` URL is read by the engine from its
own disk (vLLM: `--allowed-local-media-path`), so this module checks before the first request that each one names
an absolute path that exists here, and that no body is larger than the endpoint it goes through accepts
(`serve.max_request_bytes` on the HTTP ingress; Serve handles to the engine supervisors carry any size).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cluster.errors import ConfigError

MEDIA_PARTS = ("image_url", "video_url", "audio_url")
# What a stored record keeps of an inline (data:) URL: the media type and the first characters, as AISBench's own
# output handler shortens them (gen_inferencer_output_handler.py); the full body is in the request's fingerprint.
SHOWN_DATA_CHARS = 64


def is_multimodal(infer_cfg: Any) -> bool:
    """Whether the dataset's prompt template is AISBench's MMPromptTemplate (content parts with media)."""
    kind = (infer_cfg.get("prompt_template") or {}).get("type")
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
    return name.rsplit(".", 1)[-1] == "MMPromptTemplate"


def media_urls(messages: Any) -> Iterator[tuple[str, str]]:
    """(part type, URL) of every image/video/audio part in one row's chat messages."""
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in MEDIA_PARTS:
                value = part.get(kind)
                url = value.get("url") if isinstance(value, dict) else value
                yield kind, str(url)


def check_media(messages: list[Any], where: str) -> None:
    """Some row has media (a template that renders none is wrong; one row may have none: HLE mixes text-only
    questions with pictured ones), and every `file://` URL names an absolute path to an existing file (the engine
    opens it: a missing or relative one would fail each request on the server, after the run started)."""
    if messages and not any(next(media_urls(row_messages), None) for row_messages in messages):
        raise ConfigError(f"{where}: no row has an image, video or audio part rendered (MMPromptTemplate)")
    for row, row_messages in enumerate(messages, start=1):
        for kind, url in media_urls(row_messages):
            if not url.startswith("file:"):
                continue
            parts = urlsplit(url)
            path = Path(unquote(parts.path))
            if parts.netloc or not path.is_absolute():
                raise ConfigError(f"{where}: row {row}: {kind} {url!r} is not an absolute file:// URL: the data "
                                  "file must give absolute media paths (the engine reads them from its own disk)")
            if not path.is_file():
                raise ConfigError(f"{where}: row {row}: {kind} file not found: {path}")


def check_body_sizes(requests: list[Any], limit: int, field: str = "serve.max_request_bytes") -> None:
    """Refuse a run whose largest request body exceeds `limit` bytes before anything is sent (the ingress would
    answer each such sample 413, not retried)."""
    for request in requests:
        size = len(json.dumps(request.body).encode())
        if size > limit:
            key = request.key
            raise ConfigError(
                f"dataset {key.dataset!r} row {key.index + 1}: request body of {size} bytes exceeds {field} = "
                f"{limit}: raise it, or leave eval.transport at auto (Serve handles carry any size)")


def shortened(messages: Any) -> Any:
    """`messages` with each inline data: URL cut to its first characters, for the per-sample store and viewer (the
    same image would otherwise be stored once per sample and repeat)."""
    if not isinstance(messages, list) or not any(url.startswith("data:") for _, url in media_urls(messages)):
        return messages
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            value = part.get(kind) if kind in MEDIA_PARTS else None
            url = value.get("url") if isinstance(value, dict) else value
            if isinstance(url, str) and url.startswith("data:") and len(url) > SHOWN_DATA_CHARS:
                short = f"{url[:SHOWN_DATA_CHARS]}... ({len(url)} chars)"
                part = {**part, kind: {**value, "url": short} if isinstance(value, dict) else short}
            parts.append(part)
        out.append({**message, "content": parts})
    return out
