"""Record a notebook's headline numbers, verdict and resolved config as OUTPUT_DIR/<stem>/metrics.json."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..core.cache import atomic_write_json
from ..core.io import KEY_PATTERN

__all__ = ["VERDICTS", "output_folder", "record_result", "read_result", "redact"]

VERDICTS = ("reproduced", "not reproduced at this scale", "partly reproduced", "meets targets", "misses targets")
_SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|key|token|secret|password)$", re.IGNORECASE)


def output_folder(output_dir: str | os.PathLike, stem: str) -> Path:
    """The artifact folder OUTPUT_DIR/<stem>/, created."""
    path = Path(output_dir) / stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def redact(obj: Any) -> Any:
    """A copy of a config with secret-looking keys and values replaced by '<redacted>'."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and KEY_PATTERN.search(obj):
        return "<redacted>"
    return obj


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if getattr(obj, "ndim", 0) and hasattr(obj, "tolist"):  # numpy arrays, tensors, series: .item() needs size 1
        return _finite(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _finite(obj.item())
    return obj


def record_result(
    output_dir: str | os.PathLike,
    stem: str,
    *,
    title: str,
    claim: str,
    paper: str,
    verdict: str,
    effect: dict[str, Any],
    metrics: dict[str, Any],
    params: dict[str, Any],
    figures: list[str] | None = None,
    notes: str = "",
    fallbacks: list[str] | None = None,
    replication: dict[str, Any] | None = None,
) -> Path:
    """Write metrics.json for one notebook (effect = name, value, ci_low, ci_high) and return its path.

    `replication`: the same run on fresh seeds, {"seeds": [...], "verdict": label, "effect": {...}} (verdict then
    being the combined one: *reproduced* needs both)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
    missing = {"name", "value", "ci_low", "ci_high"} - set(effect)
    if missing:
        raise ValueError(f"effect lacks {sorted(missing)}")
    if replication is not None:
        if replication.get("verdict") not in VERDICTS or not replication.get("seeds"):
            raise ValueError("replication needs its seeds and a verdict from VERDICTS")
    folder = output_folder(output_dir, stem)
    payload = _finite(
        {
            "stem": stem,
            "title": title,
            "claim": claim,
            "paper": paper,
            "verdict": verdict,
            "effect": effect,
            "metrics": metrics,
            "params": redact(params),
            "figures": [os.path.relpath(f, folder) if Path(f).is_absolute() else str(f) for f in (figures or [])],
            "notes": notes,
            "fallbacks": list(fallbacks or []),
            **({"replication": replication} if replication is not None else {}),
        }
    )
    return atomic_write_json(folder / "metrics.json", payload, scan=True)


def read_result(output_dir: str | os.PathLike, stem: str) -> dict[str, Any]:
    """Read OUTPUT_DIR/<stem>/metrics.json."""
    with open(Path(output_dir) / stem / "metrics.json", encoding="utf-8") as f:
        return json.load(f)
