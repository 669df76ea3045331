"""What every finding shares: typed, validated parameters, an effect with its CI, a verdict (light: numpy-free).

A finding module `fNN_<name>.py` holds `Params` (a `FindingParams` dataclass whose fields are the notebook's
parameters in lower case, with the notebook's defaults), `run(params) -> Result` and `verdict(result) -> Verdict`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..core.errors import ParamError

__all__ = [
    "REPRODUCED", "PARTLY", "NOT_REPRODUCED", "MEETS", "MISSES", "ParamError", "param", "FindingParams", "Effect",
    "Verdict", "combine", "replicated",
]

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly reproduced", "not reproduced at this scale"
MEETS, MISSES = "meets targets", "misses targets"


def param(default: Any, *, min: float | None = None, gt: float | None = None, max: float | None = None,
          choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with a default and the range checked by FindingParams (min/max inclusive, gt exclusive)."""
    meta = {"min": min, "gt": gt, "max": max, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """value converted to the annotated type, or ParamError naming the parameter."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    upper = name.upper()
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(name, v, args[0] if args else Any) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ParamError(f"parameter {upper}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ParamError(f"parameter {upper}: expected a whole number, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, int):
            return value
        raise ParamError(f"parameter {upper}: expected a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ParamError(f"parameter {upper}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ParamError(f"parameter {upper}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ParamError(f"parameter {upper}: expected a finite number, got {value!r}")
        return out
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ParamError(f"parameter {upper}: expected text, got {value!r}")
        return "" if value is None else str(value)
    return value


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    upper = name.upper()
    for v in value if isinstance(value, list) else [value]:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ParamError(f"parameter {upper}: {v!r} is not one of {', '.join(map(repr, meta['choices']))}")
        if meta.get("min") is not None and v < meta["min"]:
            raise ParamError(f"parameter {upper}: must be at least {meta['min']}, got {v!r}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ParamError(f"parameter {upper}: must be greater than {meta['gt']}, got {v!r}")
        if meta.get("max") is not None and v > meta["max"]:
            raise ParamError(f"parameter {upper}: must be at most {meta['max']}, got {v!r}")


@dataclass
class FindingParams:
    """Base of every finding's Params: coerces each field to its annotated type and checks its range on creation."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            _check_range(f.name, value, f.metadata)
            setattr(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields (overridden by findings that need them); raise ParamError."""

    @classmethod
    def names(cls) -> list[str]:
        """The notebook's parameter names (UPPER_CASE) in field order."""
        return [f.name.upper() for f in dataclasses.fields(cls)]

    @classmethod
    def from_values(cls, values: Mapping[str, Any], ignore: tuple[str, ...] = ("OUTPUT_DIR",)) -> "FindingParams":
        """Params from UPPER_CASE values (a notebook's globals() or overrides); unknown UPPER_CASE names are errors."""
        known = set(cls.names())
        upper = {k: v for k, v in values.items() if k.isupper() and k not in ignore}
        unknown = sorted(k for k in upper if k not in known)
        if unknown:
            hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
            raise ParamError(f"unknown parameter {', '.join(hints)}; {cls.__module__.rsplit('.', 1)[-1]} takes: "
                             + ", ".join(sorted(known)))
        return cls(**{k.lower(): v for k, v in upper.items() if k in known})

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "FindingParams":
        """Params from a notebook's globals(): its UPPER_CASE names that are fields (other globals are ignored)."""
        known = set(cls.names())
        return cls(**{k.lower(): v for k, v in namespace.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the parameters."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Effect:
    """A measured effect with its 95 % CI, the way the CI was computed and what it counts."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    ci_method: str = "bootstrap over answers"
    n_seeds: int | None = None  # training seeds, questions and answers the estimate counts (None: not recorded)
    n_questions: int | None = None
    n_answers: int | None = None

    @property
    def above(self) -> bool:
        """The whole CI lies above zero."""
        return self.ci_low > 0

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (the record's `effect`)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Verdict:
    """A finding's verdict: its label, the reason in one line, and the verdicts of its parts, if any."""

    label: str
    reason: str
    parts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in (REPRODUCED, PARTLY, NOT_REPRODUCED, MEETS, MISSES):
            raise ValueError(f"unknown verdict {self.label!r}")


def replicated(main: Verdict, replication: Verdict) -> Verdict:
    """The verdict a reader gets when the run was repeated on fresh seeds: `combine` of the two, so *reproduced*
    needs both; the reason says when they disagree."""
    label = combine({"seeds": main.label, "fresh seeds": replication.label})
    reason = main.reason if main.label == replication.label else (
        f"{main.reason}; on fresh seeds {replication.label}: {replication.reason}")
    return Verdict(label, reason, {"seeds": main.label, "fresh seeds": replication.label})


def combine(parts: Mapping[str, str]) -> str:
    """'reproduced' when every part is, 'not reproduced at this scale' when none is even partly, else 'partly'."""
    labels = list(parts.values())
    if labels and all(p == REPRODUCED for p in labels):
        return REPRODUCED
    if not labels or all(p == NOT_REPRODUCED for p in labels):
        return NOT_REPRODUCED
    return PARTLY
