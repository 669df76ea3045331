"""One module per finding (`fNN_<name>.py`): its parameters, its run and its verdict rule."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

__all__ = ["finding_module", "validate"]


def finding_module(stem: str) -> ModuleType | None:
    """The module whose STEM is `stem` (e.g. "01_emergent_misalignment"), or None when no finding has that stem."""
    prefix = f"f{stem.split('_', 1)[0]}_"
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith(prefix):
            module = importlib.import_module(f"{__name__}.{info.name}")
            if getattr(module, "STEM", None) == stem:
                return module
    return None


def validate(stem: str, values: dict[str, Any]) -> None:
    """Build the finding's Params from a notebook's resolved UPPER_CASE values: ParamError on a bad type or range."""
    module = finding_module(stem)
    if module is not None:
        module.Params.from_values(values)
