"""Where evalcluster keeps its data: models, engine caches, runs."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def evalcluster_home() -> Path:
    """`$EVALCLUSTER_HOME`, else `.evalcluster/` in the repo root (git-ignored)."""
    return Path(os.environ.get("EVALCLUSTER_HOME") or REPO_ROOT / ".evalcluster").resolve()


def models_dir() -> Path:
    return evalcluster_home() / "models"


def default_auth_token_path() -> Path:
    """Where Ray's auth token lives unless RAY_AUTH_TOKEN_PATH names another file."""
    return evalcluster_home() / "ray" / "auth_token"
