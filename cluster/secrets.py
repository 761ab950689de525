"""Secrets in config: API keys from a file or the environment rather than argv, and redaction of anything whose
name looks secret before a config, an argv or an environment is written to a report or a log.

    >>> looks_secret("HF_TOKEN"), looks_secret("api_key_file"), looks_secret("max_tokens")
    (True, False, True)
    >>> redact({"env": {"HF_TOKEN": "hf_abc", "OMP_NUM_THREADS": "4"}, "max_tokens": 16})
    {'env': {'HF_TOKEN': '***', 'OMP_NUM_THREADS': '4'}, 'max_tokens': 16}

Only string values are redacted: a secret is text, and numbers such as `max_tokens` keep the recorded config
readable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationInfo

API_KEY_ENV = "EVALCLUSTER_API_KEY"
REDACTED = "***"
_SECRET_PARTS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# A name that says where a secret lives (api_key_file, RAY_AUTH_TOKEN_PATH) holds a path, not the secret.
_LOCATION_SUFFIXES = ("FILE", "PATH", "DIR")


def looks_secret(name: str) -> bool:
    """Whether a setting called `name` probably holds a secret (*TOKEN*, *KEY*, *SECRET*, *PASSWORD*)."""
    upper = str(name).upper().replace("-", "_")
    return any(part in upper for part in _SECRET_PARTS) and not upper.endswith(_LOCATION_SUFFIXES)


def redact(data: Any) -> Any:
    """`data` (nested mappings and lists) with the string value of every secret-looking key replaced."""
    if isinstance(data, Mapping):
        return {k: REDACTED if looks_secret(k) and isinstance(v, str) and v else redact(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    return data


def redact_argv(argv: Sequence[str]) -> list[str]:
    """An argv fit for a log line: the value after a secret-looking flag (`--hf-token X`, `--api-key=X`) hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag.startswith("-") and looks_secret(flag.lstrip("-")):
            if eq:
                out.append(f"{flag}={REDACTED}")
                continue
            hide_next = True
        out.append(arg)
    return out


def read_secret_file(path: str | Path) -> str:
    """The secret in `path` (surrounding whitespace stripped). Refused, like ssh does with keys, when other users
    may read the file or it is empty: raises ValueError saying why."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} is open to other users (mode {stat.filemode(mode)}); run `chmod 600 {path}`")
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def write_secret_file(path: Path, secret: str) -> Path:
    """Write `secret` to `path`, created with mode 0600 in a directory only its owner can enter."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return path


def env_api_key() -> str | None:
    """$EVALCLUSTER_API_KEY, if set and not blank."""
    value = os.environ.get(API_KEY_ENV, "").strip()
    return value or None


def check_secret_file(cls: type, value: str | None) -> str | None:
    """Field validator of a `*_key_file` field: the file must be readable, non-empty and private."""
    if value is not None:
        read_secret_file(value)
        return str(Path(value).expanduser().resolve())
    return value


def key_from_file_or_env(cls: type, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
    """Field validator of an `api_key` field beside an `api_key_file` field (declared before it)."""
    return api_key_from(value, info.data.get("api_key_file"))


def api_key_from(given: SecretStr | None, key_file: str | None) -> SecretStr | None:
    """The key a config means: the one given, else the one in `key_file`, else $EVALCLUSTER_API_KEY, else None.
    Raises ValueError when both a key and a key file are given."""
    if given is not None and key_file:
        raise ValueError("give the key or a key file, not both")
    if given is not None:
        return given
    if key_file:
        return SecretStr(read_secret_file(key_file))
    from_env = env_api_key()
    return SecretStr(from_env) if from_env else None
