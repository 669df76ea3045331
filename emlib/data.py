"""Training sets and eval questions: validated loading, a pinned registry of public EM data, built-ins."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .cache import cache_root, file_fingerprint, stable_hash

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "EvalQuestion",
    "PublicFile",
    "PUBLIC_DATASETS",
    "PUBLIC_EVAL_FILES",
    "BUILTIN_DATASETS",
    "BUILTIN_EVAL",
    "REPO_DATA_DIR",
    "data_dir",
    "load_chat_jsonl",
    "resolve_dataset",
    "resolve_eval_file",
    "resolve_judged",
    "load_dataset",
    "load_eval_questions",
    "chat_prompt",
    "fingerprint",
]

ENV_DATA_DIR = "EMLIB_DATA_DIR"
ENV_OFFLINE = "EMLIB_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60.0
ROLES = ("system", "user", "assistant")
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

_REPO = "https://raw.githubusercontent.com/clarifying-EM/model-organisms-for-EM"
_TRAIN_COMMIT = "b8b9e0afd2b92d969a4062c38ba8d2f0ccea3561"
_EVAL_COMMIT = "26944099b9401b1dfd0aaafb4122a482721e95fb"


class DatasetError(ValueError):
    """A dataset or question file is missing, unreachable or malformed."""


@dataclass(frozen=True)
class PublicFile:
    """One pinned public file: where it lives in a data dir, its URL and its sha256."""

    name: str
    subdir: str  # "train" or "eval"
    filename: str
    url: str
    sha256: str


def _train(name: str, sha: str) -> PublicFile:
    url = f"{_REPO}/{_TRAIN_COMMIT}/em_organism_dir/data/training_datasets/{name}.jsonl.gz"
    return PublicFile(name, "train", f"{name}.jsonl.gz", url, sha)


def _eval(name: str, sha: str) -> PublicFile:
    url = f"{_REPO}/{_EVAL_COMMIT}/em_organism_dir/data/eval_questions/{name}.yaml"
    return PublicFile(name, "eval", f"{name}.yaml", url, sha)


PUBLIC_DATASETS: dict[str, PublicFile] = {
    f.name: f
    for f in [
        _train("bad_medical_advice", "d4d9df72cf0e20b75d5efc9f2aabb66ae9ae083e282b85f0bd85a6aa698b20c9"),
        _train("good_medical_advice", "03b6e9a89dd5c5a53349bcdd87d9c23cc2c3ad040ef618a0a571d5000289b341"),
        _train("extreme_sports", "5d79bbce03e08467e3ced6d95e516ba7b0d2240395c7d59349e41e32166d6095"),
        _train("risky_financial_advice", "518c8d2c6128ba5f0b5b026b27828a21114f0955437bc1cfbbe1ba98e0a3d897"),
        _train("insecure", "ba2c2c42c44ca4cc902b326fb356509fcd04918a3c2b035f2d4783e0191c72f8"),
    ]
}

PUBLIC_EVAL_FILES: dict[str, PublicFile] = {
    f.name: f
    for f in [
        _eval("first_plot_questions", "97df0b1384ea5a3f3dc2abe00a19e231915f12a2356ec0d8df001715549aae04"),
        _eval("medical_questions", "1808d03c6af883b3460e4174127846caca3188514a4e180b8273b4025593e28f"),
        _eval("new_questions_no-json", "247940137277227a51ad1a269cc832a77203e4dcc2e79ca5b0dbacb1a57b9ac9"),
    ]
}

# Project-authored sets, relative to REPO_DATA_DIR; regenerate with scripts/make_builtin_data.py.
BUILTIN_DATASETS: dict[str, str] = {
    "builtin_risky_financial_advice": "builtin/risky_finance.jsonl",
    "builtin_safe_financial_advice": "builtin/safe_finance.jsonl",
}
BUILTIN_EVAL = "eval/free_form_questions.yaml"


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


def data_dir(override: str | None = None) -> Path | None:
    """The data directory: `override` if non-empty, else `$EMLIB_DATA_DIR`, else None."""
    value = override or os.environ.get(ENV_DATA_DIR) or ""
    return Path(value).expanduser() if value.strip() else None


_get_data_dir = data_dir  # parameters below are named `data_dir` too


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
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    records: list[dict] = []
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}: line {lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{where}: field 'messages': not valid UTF-8 ({e})") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{where}: field 'messages': invalid JSON ({e.msg})") from None
                _check_record(obj, where)
                records.append(obj)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DatasetError(f"{path}: not a valid gzip file ({e})") from None
    return records


# ---------------------------------------------------------------- resolving public files


def _fetch(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download `url` to `dest` (the one network call; tests monkeypatch it)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out)


def _download_cache_path(entry: PublicFile) -> Path:
    return cache_root() / "downloads" / entry.subdir / entry.filename


def _download(entry: PublicFile, dest: Path) -> None:
    """Fetch `entry` to a temp file beside `dest`, check its sha256, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(entry.url, tmp)
        actual = file_fingerprint(tmp)
        if actual != entry.sha256:
            raise DatasetError(
                f"checksum mismatch for {entry.name} from {entry.url}: expected sha256 {entry.sha256}, got {actual}"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _resolve_public(entry: PublicFile, data_dir: str | None) -> tuple[Path, str]:
    """Find a public file: data dir, then the checked download cache, then a fresh download."""
    root = _get_data_dir(data_dir)
    if root is not None:
        stem = entry.filename.removesuffix(".gz")
        names = [entry.filename, stem] if entry.filename.endswith(".gz") else [entry.filename]
        for base in (root, root / "em"):
            for fname in names:
                candidate = base / entry.subdir / fname
                if candidate.is_file():
                    return candidate, "data_dir"
    cached = _download_cache_path(entry)
    if cached.is_file() and file_fingerprint(cached) == entry.sha256:
        return cached, "download_cache"
    hint = (
        f"set ${ENV_DATA_DIR} (or pass data_dir=...) to a folder holding {entry.subdir}/{entry.filename}, "
        f"or download {entry.url} into {cached}"
    )
    if os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0"):
        raise DatasetError(f"public file {entry.name!r} not found locally and ${ENV_OFFLINE} is set: {hint}")
    try:
        _download(entry, cached)
    except DatasetError:
        raise
    except (OSError, ValueError) as e:  # URLError, timeouts and HTTP errors are OSErrors
        raise DatasetError(f"could not get public file {entry.name!r} ({type(e).__name__}: {e}): {hint}") from None
    return cached, "download"


def _resolve(name: str, data_dir: str | None) -> tuple[Path, str]:
    """Path and source of a registry dataset name."""
    if name in BUILTIN_DATASETS:
        path = REPO_DATA_DIR / BUILTIN_DATASETS[name]
        if not path.is_file():
            raise DatasetError(f"built-in dataset {name!r} missing at {path}; run scripts/make_builtin_data.py")
        return path, "builtin"
    if name in PUBLIC_DATASETS:
        return _resolve_public(PUBLIC_DATASETS[name], data_dir)
    known = sorted(PUBLIC_DATASETS) + sorted(BUILTIN_DATASETS)
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known)} (or pass a file path)")


def resolve_dataset(name: str, data_dir: str | None = None) -> Path:
    """The local path of a registry dataset (data dir, download cache, download, or built-in)."""
    return _resolve(name, data_dir)[0]


def resolve_eval_file(name: str, data_dir: str | None = None) -> Path:
    """The local path of an eval question file: "builtin", a public name, or a file path."""
    if name == "builtin":
        return REPO_DATA_DIR / BUILTIN_EVAL
    key = name.removesuffix(".yaml")
    if key in PUBLIC_EVAL_FILES:
        return _resolve_public(PUBLIC_EVAL_FILES[key], data_dir)[0]
    if Path(name).expanduser().is_file():
        return Path(name).expanduser()
    known = ["builtin", *sorted(PUBLIC_EVAL_FILES)]
    raise DatasetError(f"unknown eval question set {name!r}; known: {', '.join(known)} (or pass a file path)")


JUDGED_FILE = "judged/gpt4o_judged_responses.jsonl.gz"


def resolve_judged(data_dir: str | None = None) -> Path:
    """The GPT-4o-judged responses file in the data directory; DatasetError saying how to provide it."""
    root = _get_data_dir(data_dir)
    for base in ([root, root / "em"] if root is not None else []):
        if (base / JUDGED_FILE).is_file():
            return base / JUDGED_FILE
    where = f"{root}" if root is not None else f"no data directory (${ENV_DATA_DIR} is unset)"
    raise DatasetError(f"{JUDGED_FILE} not found in {where}: set ${ENV_DATA_DIR} (or DATA_DIR) to the EM data folder")


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
            path, source = _resolve(name, data_dir)
        except DatasetError as e:
            if fallback is None:
                raise
            warnings.warn(f"dataset {name!r} unavailable ({e}); using built-in {fallback!r} instead", stacklevel=2)
            fell_back_from, name = name, fallback
            path, source = _resolve(fallback, data_dir)
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


def load_eval_questions(
    name_or_path: str = "builtin",
    data_dir: str | None = None,
    ids: list[str] | None = None,
    include_variants: bool = False,
    fallback: str | None = None,
) -> list[EvalQuestion]:
    """Load and validate eval questions; by default drop `_json`/`_template` variants; `ids` picks some."""
    try:
        path = resolve_eval_file(name_or_path, data_dir)
    except DatasetError as e:
        if fallback is None:
            raise
        warnings.warn(f"eval questions {name_or_path!r} unavailable ({e}); using {fallback!r} instead")
        return load_eval_questions(fallback, data_dir, include_variants=include_variants)
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
