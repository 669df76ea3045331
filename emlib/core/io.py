"""Small file and environment helpers shared by every layer: line-numbered JSONL reading, environment overrides,
chat-template rendering, and the pattern of an API key."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import DatasetError, SecretLeakError

__all__ = ["KEY_PATTERN", "secret_hits", "check_secrets", "read_jsonl", "env_override", "chat_ids", "chat_text"]

KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")  # an OpenAI-style secret key
_SECRET_ENV = re.compile(r"API_KEY|TOKEN|SECRET", re.IGNORECASE)


def secret_hits(text: str) -> list[str]:
    """What in `text` looks like a credential: a key pattern or the value of a *API_KEY*/*TOKEN*/*SECRET* variable
    (described without the value itself)."""
    hits = ["an API-key-like string"] if KEY_PATTERN.search(text) else []
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= 8 and not value.startswith(("/", "~")) and value in text:
            hits.append(f"the value of ${name}")
    return hits


def check_secrets(text: str, where: str) -> None:
    """SecretLeakError naming `where` and what was found, if `text` holds a credential."""
    if hits := secret_hits(text):
        raise SecretLeakError(f"{where}: holds {' and '.join(hits)}; nothing was written")


def read_jsonl(path: str | os.PathLike, field: str = "") -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line of a `.jsonl` or `.jsonl.gz` file.

    Errors are DatasetErrors naming the file and line (and `field`, when given): not found, not gzip, not UTF-8, not JSON.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    label = f" field '{field}':" if field else ""
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}: line {lineno}:{label}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{where} not valid UTF-8 ({e})") from None
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{where} invalid JSON ({e.msg})") from None
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a file") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DatasetError(f"{path}: not a valid gzip file ({e})") from None


@contextlib.contextmanager
def env_override(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) an environment variable inside the block; the old value comes back after it."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def chat_ids(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template (whatever container it returns)."""
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def chat_text(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """A conversation rendered as text with the tokenizer's chat template."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
