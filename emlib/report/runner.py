"""Execute one finding notebook with papermill, find notebooks and their parameters, check outputs for secrets.

An executed notebook lands in `run_dir/<stem>.ipynb` (+ `.html`), its artifacts and `run.json` in `run_dir/<stem>/`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.metadata
import logging
import os
import platform
import json
import re
import shutil
import subprocess
import time
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from ..core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..core.errors import ParamError, SecretLeakError, UserError
from ..core.io import secret_hits
from .record import redact

__all__ = [
    "repo_root", "list_notebooks", "resolve_notebook", "load_param_sections", "load_params",
    "unknown_parameter_error", "resolve_parameters", "parse_override",
    "machine_info", "run_notebook", "check_no_secrets", "run_files",
]

log = logging.getLogger(__name__)
_NB_GLOB = "[0-9][0-9]_*.ipynb"
# Under papermill, progress bars are plain text lines: the kernel maps tqdm.autonotebook to tqdm.std before any cell
# runs, so `tqdm.auto` neither draws widgets (frozen at 0 % in a saved notebook) nor warns "IProgress not found".
# In JupyterLab (no such kernel argument) `tqdm.auto` draws ipywidgets bars.
_PLAIN_PROGRESS = ("--IPKernelApp.exec_lines=__import__('sys').modules.setdefault("
                   "'tqdm.autonotebook', __import__('tqdm.std', fromlist=['tqdm']))")


def repo_root() -> Path:
    """The repository root (the folder holding `emlib/` and `notebooks/`)."""
    return Path(__file__).resolve().parents[2]


def list_notebooks(notebook_dir: str | os.PathLike | None = None) -> list[Path]:
    """The finding notebooks `NN_name.ipynb` in `notebook_dir` (default `<repo>/notebooks`), sorted."""
    folder = Path(notebook_dir) if notebook_dir is not None else repo_root() / "notebooks"
    return sorted(folder.glob(_NB_GLOB))


def resolve_notebook(key: str | os.PathLike, notebook_dir: str | os.PathLike | None = None) -> Path:
    """A notebook from "01", "1", "01_name", "name" or a path; ValueError listing the available ones."""
    text = str(key)
    if Path(text).is_file():
        return Path(text).resolve()
    if os.sep in text or "/" in text:
        raise UserError(f"notebook file {text!r} does not exist")
    text = text.removesuffix(".ipynb")
    notebooks = list_notebooks(notebook_dir)
    if text.isdigit():
        hits = [p for p in notebooks if int(p.stem.split("_", 1)[0]) == int(text)]
    else:
        hits = [p for p in notebooks if text in (p.stem, p.stem.split("_", 1)[1])]
    if len(hits) == 1:
        return hits[0].resolve()
    available = ", ".join(p.stem for p in notebooks) or "(none)"
    what = "is ambiguous" if hits else "matches no notebook"
    raise UserError(f"notebook {text!r} {what}; available: {available}")


def load_param_sections(params_file: str | os.PathLike | None, stem: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The params file's `defaults` mapping and its `<stem>` mapping (both {} without a file)."""
    if params_file is None:
        return {}, {}
    try:
        with open(params_file, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ParamError(f"{params_file}: params file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ParamError(f"{params_file}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ParamError(f"{params_file}: expected a mapping of notebook stems, got {type(data).__name__}")
    parts = []
    for section in ("defaults", stem):
        part = data.get(section) or {}
        if not isinstance(part, dict):
            raise ParamError(f"{params_file}: section {section!r} must be a mapping")
        parts.append(part)
    return parts[0], parts[1]


def load_params(params_file: str | os.PathLike | None, stem: str) -> dict[str, Any]:
    """The params file's `defaults` mapping updated with its `<stem>` mapping ({} without a file)."""
    defaults, own = load_param_sections(params_file, stem)
    return {**defaults, **own}


def unknown_parameter_error(stem: str, unknown: Iterable[str], declared: Iterable[str], where: str) -> ParamError:
    """A ParamError naming the unknown parameters (with the closest declared names) and what the notebook takes."""
    names = sorted(k for k in declared if k != "OUTPUT_DIR")
    hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, 1)) else k for k in sorted(unknown)]
    return ParamError(f"{where}: unknown parameter {', '.join(hints)} for {stem}; it takes: {', '.join(names)}")


def parse_override(value: str) -> Any:
    """A CLI value parsed as YAML ("32" -> 32, "[1, 2]" -> list, "1e-4" -> 0.0001); unparsable text stays a string."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", parsed.strip()):
        return float(parsed)  # YAML 1.1 reads "1e-4" as a string
    return parsed


@lru_cache(maxsize=1)
def machine_info() -> dict[str, Any]:
    """Python, platform, CPU count, torch version and GPU names of this machine (torch is not imported)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
            gpus = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch_version, "gpus": gpus}


def resolve_parameters(
    nb_path: Path, params_file: str | os.PathLike | None, overrides: dict[str, Any] | None, strict_overrides: bool = True
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(values passed to papermill, every parameter's resolved value, names dropped), or ParamError for unknown names."""
    import papermill as pm

    stem = nb_path.stem
    declared = pm.inspect_notebook(str(nb_path))
    defaults, own = load_param_sections(params_file, stem)
    overrides = dict(overrides or {})
    if unknown := [k for k in own if k not in declared]:
        raise unknown_parameter_error(stem, unknown, declared, f"{params_file} section {stem}")
    if strict_overrides and (unknown := [k for k in overrides if k not in declared]):
        raise unknown_parameter_error(stem, unknown, declared, "-p")
    requested = {**defaults, **own, **overrides}
    for name, value in requested.items():
        if secret_hits(json.dumps(value, default=str)):
            where = "-p" if name in overrides else f"{params_file}"
            raise ParamError(f"{where}: parameter {name}: its value looks like a credential; keys are read from the "
                             "environment (e.g. $OPENAI_API_KEY), never from parameters")
    if "OUTPUT_DIR" in requested:
        log.warning("%s: ignoring OUTPUT_DIR=%r; it is always the run folder", stem, requested.pop("OUTPUT_DIR"))
    if "OUTPUT_DIR" not in declared:
        log.warning("%s does not declare OUTPUT_DIR in its parameters cell", stem)
    passed = {k: v for k, v in requested.items() if k in declared}
    dropped = sorted(k for k in requested if k not in declared)
    resolved = {**{k: _literal(v.get("default", "")) for k, v in declared.items()}, **passed}
    return passed, resolved, dropped


def _literal(source: str) -> Any:
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return source


def _describe_error(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        cell = getattr(exc, "exec_count", None)
        return f"{ename}: {evalue}" + (f" (cell [{cell}])" if cell is not None else "")
    return f"{type(exc).__name__}: {exc}"


def _traceback_tail(exc: BaseException, lines: int = 25) -> str | None:
    tb = getattr(exc, "traceback", None)
    if not tb:
        return None
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", "\n".join(tb))
    return "\n".join(text.splitlines()[-lines:])


def _render_html(executed: Path, target: Path) -> None:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    exporter.embed_images = True
    body, _ = exporter.from_filename(str(executed))
    atomic_write_text(target, body, scan=True)


def run_notebook(
    key: str | os.PathLike,
    run_dir: str | os.PathLike,
    params_file: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
    raise_on_error: bool = False,
    notebook_dir: str | os.PathLike | None = None,
    execution_timeout: int | None = None,
    log_output: bool = False,
    strict_overrides: bool = True,
    validate: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Execute one notebook into `run_dir/<stem>.ipynb` (+ .html, <stem>/run.json); return its status dict.

    Parameters are checked before anything is written: a name the notebook does not declare in its own section of the
    params file, or (with `strict_overrides`) among `overrides`, is a ParamError; `validate(stem, values)` may check
    types and ranges. Keys under the file's `defaults:` that a notebook does not declare are dropped.
    """
    import papermill as pm

    nb_path = resolve_notebook(key, notebook_dir)
    stem = nb_path.stem
    run_dir = Path(run_dir).resolve()
    passed, resolved, dropped = resolve_parameters(nb_path, params_file, overrides, strict_overrides=strict_overrides)
    if validate is not None:
        validate(stem, {k: v for k, v in resolved.items() if k != "OUTPUT_DIR"})
    passed["OUTPUT_DIR"] = str(run_dir)
    folder = run_dir / stem
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "run.json"):
        (folder / stale).unlink(missing_ok=True)
    executed, target_html = run_dir / f"{stem}.ipynb", run_dir / f"{stem}.html"
    target_html.unlink(missing_ok=True)
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    error = traceback = None
    failure: BaseException | None = None
    pending = run_dir / f".{stem}.tmp.ipynb"  # scanned for secrets before it takes the notebook's name
    try:
        pm.execute_notebook(str(nb_path), str(pending), parameters=passed, kernel_name=kernel_name,
                            cwd=str(nb_path.parent), progress_bar=progress, log_output=log_output,
                            execution_timeout=execution_timeout, extra_arguments=[_PLAIN_PROGRESS])
    except Exception as exc:  # noqa: BLE001 - a failed notebook is a result, not a crash of the suite
        failure, error, traceback = exc, _describe_error(exc), _traceback_tail(exc)
        log.error("%s failed: %s", stem, error)
    finally:
        if pending.exists():
            try:
                atomic_write_bytes(executed, pending.read_bytes(), scan=True)
            finally:
                pending.unlink()
    wall = round(time.perf_counter() - t0, 3)
    html_name: str | None = None
    if executed.exists():
        try:
            _render_html(executed, target_html)
            html_name = target_html.name
        except Exception as exc:  # noqa: BLE001 - the run result matters more than its rendering
            log.warning("%s: could not render HTML: %s", stem, exc)
    result = {"stem": stem, "status": "failed" if failure else "ok", "wall_time_s": wall,
              "executed": str(executed) if executed.exists() else None, "error": error}
    atomic_write_json(folder / "run.json", scan=True, obj={
        **result,
        "traceback": traceback,
        "executed": executed.name if executed.exists() else None,
        "html": html_name,
        "notebook": str(nb_path),
        "started_at": started.isoformat(timespec="seconds"),
        "kernel_name": kernel_name,
        "params_file": str(params_file) if params_file is not None else None,
        "parameters": redact({k: v for k, v in resolved.items() if k != "OUTPUT_DIR"}),
        "passed_parameters": sorted(k for k in passed if k != "OUTPUT_DIR"),
        "dropped_parameters": dropped,
        "machine": machine_info(),
    })
    if failure is not None and raise_on_error:
        raise failure
    return result


def run_files(run_dir: str | os.PathLike) -> list[Path]:
    """The files of a run that check_no_secrets inspects: executed notebooks, HTML and JSON files."""
    root = Path(run_dir)
    found = [*root.glob("*.ipynb"), *root.glob("*.html"), *root.rglob("*.json")]
    return sorted({p for p in found if p.is_file()})


def check_no_secrets(paths: Iterable[str | os.PathLike]) -> None:
    """Raise SecretLeakError if a file holds an `sk-...` key or the value of a *API_KEY*/*TOKEN*/*SECRET* env var."""
    problems = []
    for path in paths:
        text = Path(path).read_bytes().decode("utf-8", errors="ignore")
        problems += [f"{path}: {hit}" for hit in secret_hits(text)]
    if problems:
        raise SecretLeakError("possible secrets in the run's outputs:\n  " + "\n  ".join(problems))
