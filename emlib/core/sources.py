"""Where the public EM data comes from: a data directory, a checked download cache, or a pinned, sha256-checked download."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, file_fingerprint
from .errors import DatasetError

__all__ = [
    "PublicFile", "resolve_source", "PUBLIC_DATASETS", "PUBLIC_EVAL_FILES", "BUILTIN_DATASETS", "BUILTIN_EVAL",
    "REPO_DATA_DIR", "ENV_DATA_DIR", "ENV_OFFLINE", "data_dir", "resolve_dataset", "resolve_eval_file", "resolve_judged",
    "ADVBENCH_FILE", "resolve_advbench",
    "ENV_MWE_DIR", "resolve_mwe_dir",
]

ENV_DATA_DIR = "EMLIB_DATA_DIR"
ENV_OFFLINE = "EMLIB_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60.0
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"

_REPO = "https://raw.githubusercontent.com/clarifying-EM/model-organisms-for-EM"
_TRAIN_COMMIT = "b8b9e0afd2b92d969a4062c38ba8d2f0ccea3561"
_EVAL_COMMIT = "26944099b9401b1dfd0aaafb4122a482721e95fb"


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


def data_dir(override: str | None = None) -> Path | None:
    """The data directory: `override` if non-empty, else `$EMLIB_DATA_DIR`, else None."""
    value = override or os.environ.get(ENV_DATA_DIR) or ""
    return Path(value).expanduser() if value.strip() else None


_get_data_dir = data_dir  # parameters below are named `data_dir` too


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


def resolve_source(name: str, data_dir: str | None) -> tuple[Path, str]:
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
    return resolve_source(name, data_dir)[0]


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


ADVBENCH_FILE = "safety/advbench_harmful_behaviors.csv.gz"  # AdvBench (Zou et al. 2023), MIT; never committed here
ADVBENCH_SHA256 = "f4de7ab2d8e04ad23db335efc3d2691ec332cf28a90c82a068fce7e328684597"


def resolve_advbench(data_dir: str | None = None) -> Path:
    """AdvBench's harmful behaviours in the data directory or beside it (`<dir>/safety/`, `<dir>/../safety/`: the EM
    data directory is usually `…/data/em`), sha256-checked; DatasetError saying how to provide it."""
    root = _get_data_dir(data_dir)
    for base in ([root, root.parent] if root is not None else []):
        path = base / ADVBENCH_FILE
        if path.is_file():
            if file_fingerprint(path) != ADVBENCH_SHA256:
                raise DatasetError(f"{path}: sha256 {file_fingerprint(path)} is not AdvBench's {ADVBENCH_SHA256}")
            return path
    where = f"{root} or {root.parent}" if root is not None else f"no data directory (${ENV_DATA_DIR} is unset)"
    raise DatasetError(f"{ADVBENCH_FILE} not found in {where}: put AdvBench's harmful_behaviors.csv (gzip) there "
                       f"(github.com/llm-attacks/llm-attacks, data/advbench) and set ${ENV_DATA_DIR} (or DATA_DIR)")


ENV_MWE_DIR = "EMLIB_MWE_DIR"
MWE_SOURCE = ("GitHub anthropics/evals, commit 84fcc677e52e1902d696c32cd1a6b663e70d3993: persona/<name>.jsonl and "
              "advanced-ai-risk/lm_generated_evals/<name>.jsonl, gzipped into persona/ and xrisk/")


def resolve_mwe_dir(override: str | None = None) -> Path:
    """The folder of the model-written-evaluation sets (`persona/`, `xrisk/`): `override` if non-empty, else
    `$EMLIB_MWE_DIR`, else `steering/mwe` beside the EM data (in `$EMLIB_DATA_DIR` or its parent), else
    `../shared/data/steering/mwe` beside the checkout; DatasetError naming every place tried."""
    explicit = override or os.environ.get(ENV_MWE_DIR) or ""
    if explicit.strip():
        candidates = [Path(explicit).expanduser()]
    else:
        root = _get_data_dir(None)
        candidates = [base / "steering" / "mwe" for base in ([root, root.parent] if root is not None else [])]
        candidates.append(REPO_DATA_DIR.parents[1] / "shared" / "data" / "steering" / "mwe")
    for folder in candidates:
        if (folder / "persona").is_dir() or (folder / "xrisk").is_dir():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"no model-written-evaluation sets (persona/, xrisk/) in {tried}: set ${ENV_MWE_DIR} (or DATA_DIR) "
                       f"to that folder; the sets come from {MWE_SOURCE}")
