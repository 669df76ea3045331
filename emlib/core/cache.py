"""On-disk cache for expensive steps, keyed by a hash of everything that determines them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from .io import check_secrets

__all__ = [
    "cache_root",
    "stable_hash",
    "cache_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_dir",
    "file_fingerprint",
]


def cache_root() -> Path:
    """The cache folder: `$EMLIB_CACHE_DIR`, else `~/.cache/emlib`."""
    root = os.environ.get("EMLIB_CACHE_DIR") or os.path.join(Path.home(), ".cache", "emlib")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-serialisable parts (dataclasses and dicts in key order)."""
    payload = json.dumps(_jsonable(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def cache_dir(kind: str, key: str) -> Path:
    """The folder for one cached artifact (`<root>/<kind>/<key>`); not created."""
    return cache_root() / kind / key


def file_fingerprint(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, scan: bool = False) -> Path:
    """Write bytes to a temp file beside `path` (usual permissions), then rename it into place.

    With `scan`, text that holds a credential (core.io.check_secrets) raises SecretLeakError and nothing is written.
    """
    path = Path(path)
    if scan:
        check_secrets(data.decode("utf-8", errors="ignore"), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, scan: bool = False) -> Path:
    """Write UTF-8 text atomically (temp file, then rename); `scan` as in atomic_write_bytes."""
    return atomic_write_bytes(path, text.encode("utf-8"), scan=scan)


def atomic_write_json(path: str | os.PathLike, obj: Any, scan: bool = False) -> Path:
    """Write JSON atomically (temp file, then rename); `scan` as in atomic_write_bytes."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", scan=scan)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder that is renamed to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
