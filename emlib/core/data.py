"""Training sets and eval questions: validated loading from a registry name, the built-ins or a file."""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .cache import file_fingerprint, stable_hash
from .errors import DatasetError
from .io import read_jsonl
from .sources import BUILTIN_DATASETS, PUBLIC_DATASETS, PUBLIC_EVAL_FILES, resolve_eval_file, resolve_source
from .sources import data_dir as sources_data_dir

__all__ = [
    "DatasetInfo", "EvalQuestion", "load_chat_jsonl", "load_dataset", "may_fall_back", "choose_eval_set",
    "load_eval_questions", "chat_prompt", "fingerprint", "checked_item_id",
]

ROLES = ("system", "user", "assistant")


@dataclass
class DatasetInfo:
    """Where a loaded dataset came from, how many examples were kept, and its file hash."""

    name: str
    path: str
    source: str  # "data_dir" | "download_cache" | "download" | "builtin" | "file"
    n_examples: int
    sha256: str
    fell_back_from: str | None = None
    n_total: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON reports)."""
        return asdict(self)


@dataclass
class EvalQuestion:
    """One free-form eval question: an id, its paraphrases and an optional system prompt."""

    id: str
    paraphrases: list[str]
    system: str | None = None


# ---------------------------------------------------------------- chat jsonl


def _check_record(obj: Any, where: str) -> None:
    """Raise DatasetError if one parsed jsonl line is not a valid chat example."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: field 'messages': line is not a JSON object")
    if "messages" not in obj:
        raise DatasetError(f"{where}: field 'messages': missing")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: field 'messages': must be a non-empty list")
    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise DatasetError(f"{where}: field '{field}': message is not an object")
        for key in ("role", "content"):
            if key not in msg:
                raise DatasetError(f"{where}: field '{field}.{key}': missing")
        if msg["role"] not in ROLES:
            raise DatasetError(f"{where}: field '{field}.role': unknown role {msg['role']!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(msg["content"], str) or not msg["content"].strip():
            raise DatasetError(f"{where}: field '{field}.content': empty or not a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{where}: field 'messages': no assistant message")
    if messages[-1]["role"] != "assistant":
        raise DatasetError(f"{where}: field 'messages[{len(messages) - 1}].role': last message must be from the assistant")


def load_chat_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read and validate a chat-`messages` `.jsonl` or `.jsonl.gz` file; blank lines are skipped."""
    records: list[dict] = []
    for lineno, obj in read_jsonl(path, field="messages"):
        _check_record(obj, f"{path}: line {lineno}")
        records.append(obj)
    return records


# ---------------------------------------------------------------- loading


def load_dataset(
    name_or_path: str,
    data_dir: str | None = None,
    n: int | None = None,
    seed: int = 0,
    fallback: str | None = None,
) -> tuple[list[dict], DatasetInfo]:
    """Load a dataset by registry name or path; `n` keeps a seeded subset; `fallback` names a built-in."""
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if fallback is not None and fallback not in BUILTIN_DATASETS:
        raise DatasetError(f"fallback must be a built-in dataset ({', '.join(sorted(BUILTIN_DATASETS))}), got {fallback!r}")
    fell_back_from: str | None = None
    name = name_or_path
    if name in PUBLIC_DATASETS or name in BUILTIN_DATASETS:
        try:
            path, source = resolve_source(name, data_dir)
        except DatasetError as e:
            if not may_fall_back(name, data_dir, fallback):
                raise
            warnings.warn(f"dataset {name!r} unavailable ({e}); using built-in {fallback!r} instead", stacklevel=2)
            fell_back_from, name = name, fallback
            path, source = resolve_source(fallback, data_dir)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            known = ", ".join(sorted(PUBLIC_DATASETS) + sorted(BUILTIN_DATASETS))
            raise DatasetError(f"{name_or_path!r} is neither a known dataset ({known}) nor an existing file")
        source, name = "file", path.name.split(".")[0]
    examples = load_chat_jsonl(path)
    n_total = len(examples)
    if n is not None and n < n_total:
        keep = sorted(random.Random(seed).sample(range(n_total), n))
        examples = [examples[i] for i in keep]
    info = DatasetInfo(
        name=name,
        path=str(path),
        source=source,
        n_examples=len(examples),
        sha256=file_fingerprint(path),
        fell_back_from=fell_back_from,
        n_total=n_total,
    )
    return examples, info


def may_fall_back(name: str, data_dir: str | None, fallback: str | None) -> bool:
    """The built-in fallback stands in only for a public set, only when no data directory is configured at all."""
    public = name in PUBLIC_DATASETS or name.removesuffix(".yaml") in PUBLIC_EVAL_FILES
    return fallback is not None and public and sources_data_dir(data_dir) is None


def choose_eval_set(name: str, data_dir: str | None, fallback: str | None) -> tuple[str, str | None]:
    """(the question set to load, the requested one when it fell back to `fallback`, else None)."""
    try:
        resolve_eval_file(name, data_dir)
        return name, None
    except DatasetError:
        if not may_fall_back(name, data_dir, fallback):
            raise
        return str(fallback), name


def checked_item_id(path: Any, i: int, item: Any, seen: set[str]) -> tuple[str, str]:
    """Item `i` of a YAML list file: its id (a non-empty string, not in `seen`, then added) and where it is, for errors."""
    where = f"{path}: item {i}"
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: field 'id': item is not a mapping")
    qid = item.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise DatasetError(f"{where}: field 'id': missing or not a non-empty string")
    where = f"{path}: item {i} (id={qid!r})"
    if qid in seen:
        raise DatasetError(f"{where}: field 'id': duplicate id")
    seen.add(qid)
    return qid, where


def load_eval_questions(
    name_or_path: str = "builtin",
    data_dir: str | None = None,
    ids: list[str] | None = None,
    include_variants: bool = False,
    fallback: str | None = None,
) -> list[EvalQuestion]:
    """Load and validate eval questions; by default drop `_json`/`_template` variants; `ids` picks some.

    `fallback` (e.g. "builtin") is used only as `may_fall_back` allows: see `choose_eval_set`.
    """
    name, fell_back_from = choose_eval_set(name_or_path, data_dir, fallback)
    if fell_back_from is not None:
        warnings.warn(f"eval questions {fell_back_from!r} unavailable without a data directory; using {name!r} instead")
        return load_eval_questions(name, data_dir, include_variants=include_variants)
    path = resolve_eval_file(name_or_path, data_dir)
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(items, list):
        raise DatasetError(f"{path}: top level must be a list of question items")
    questions: list[EvalQuestion] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        qid, where = checked_item_id(path, i, item, seen)
        paras = item.get("paraphrases")
        if not isinstance(paras, list) or not paras:
            raise DatasetError(f"{where}: field 'paraphrases': missing or empty")
        for j, p in enumerate(paras):
            if not isinstance(p, str) or not p.strip():
                raise DatasetError(f"{where}: field 'paraphrases[{j}]': not a non-empty string")
        system = item.get("system")
        if system is not None and not isinstance(system, str):
            raise DatasetError(f"{where}: field 'system': not a string")
        questions.append(EvalQuestion(id=qid, paraphrases=list(paras), system=system))
    if ids is not None:
        by_id = {q.id: q for q in questions}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise DatasetError(f"{path}: field 'id': unknown ids requested: {', '.join(map(str, unknown))}")
        return [by_id[i] for i in ids]
    if not include_variants:
        questions = [q for q in questions if not q.id.endswith(("_json", "_template"))]
    return questions


def chat_prompt(question: EvalQuestion | str, paraphrase_index: int = 0) -> list[dict]:
    """The chat messages for a question: its system prompt (if any), then one paraphrase as the user turn."""
    if isinstance(question, str):
        return [{"role": "user", "content": question}]
    if not -len(question.paraphrases) <= paraphrase_index < len(question.paraphrases):
        raise IndexError(f"question {question.id!r} has {len(question.paraphrases)} paraphrases, asked for {paraphrase_index}")
    messages = [{"role": "system", "content": question.system}] if question.system else []
    return messages + [{"role": "user", "content": question.paraphrases[paraphrase_index]}]


def fingerprint(examples: list[dict]) -> str:
    """A stable hash of the examples' content (order-sensitive), for training cache keys."""
    return stable_hash("chat-examples-v1", examples, length=16)
