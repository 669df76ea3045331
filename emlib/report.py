"""Run the finding notebooks with papermill and build the suite's HTML report.

Layout of a run folder `run_dir`: `<stem>.ipynb` / `<stem>.html` (executed notebook), `<stem>/` (its
OUTPUT_DIR artifacts: metrics.json, figures, run.json) and `index.html` (the report).
"""

from __future__ import annotations

import ast
import html
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import yaml

from .cache import atomic_write_json, atomic_write_text
from .record import redact

__all__ = [
    "NotebookRunError", "SecretLeakError", "repo_root", "list_notebooks", "resolve_notebook", "load_params",
    "parse_override", "machine_info", "run_notebook", "check_no_secrets", "run_files", "build_report", "run_all",
    "default_run_dir", "latest_run_dir",
]

log = logging.getLogger(__name__)
_NB_GLOB = "[0-9][0-9]_*.ipynb"
_SK_KEY = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")
_SECRET_ENV = re.compile(r"API_KEY|TOKEN|SECRET", re.IGNORECASE)
_BADGES = {
    "reproduced": "green", "meets targets": "green", "partly reproduced": "amber",
    "not reproduced at this scale": "grey", "misses targets": "grey", "failed": "red",
}


class NotebookRunError(RuntimeError):
    """Raised by run_all (after the report is written) when some notebooks failed."""

    def __init__(self, index: Path, failed: list[str]):
        super().__init__(f"{len(failed)} notebook(s) failed: {', '.join(failed)}; report at {index}")
        self.index, self.failed = index, failed


class SecretLeakError(RuntimeError):
    """Raised by check_no_secrets when an output file contains something that looks like a credential."""


def repo_root() -> Path:
    """The repository root (the folder holding `emlib/` and `notebooks/`)."""
    return Path(__file__).resolve().parent.parent


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
        raise ValueError(f"notebook file {text!r} does not exist")
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
    raise ValueError(f"{text!r} {what}; available: {available}")


def load_params(params_file: str | os.PathLike | None, stem: str) -> dict[str, Any]:
    """The params file's `defaults` mapping updated with its `<stem>` mapping ({} without a file)."""
    if params_file is None:
        return {}
    with open(params_file, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{params_file}: expected a mapping of notebook stems, got {type(data).__name__}")
    merged: dict[str, Any] = {}
    for section in ("defaults", stem):
        part = data.get(section) or {}
        if not isinstance(part, dict):
            raise ValueError(f"{params_file}: section {section!r} must be a mapping")
        merged.update(part)
    return merged


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
    atomic_write_text(target, body)


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
) -> dict[str, Any]:
    """Execute one notebook into `run_dir/<stem>.ipynb` (+ .html, <stem>/run.json); return its status dict."""
    import papermill as pm

    nb_path = resolve_notebook(key, notebook_dir)
    stem = nb_path.stem
    run_dir = Path(run_dir).resolve()
    folder = run_dir / stem
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "run.json"):
        (folder / stale).unlink(missing_ok=True)
    declared = pm.inspect_notebook(str(nb_path))
    requested = {**load_params(params_file, stem), **(overrides or {})}
    if "OUTPUT_DIR" in requested:
        log.warning("%s: ignoring OUTPUT_DIR=%r; it is always the run folder", stem, requested["OUTPUT_DIR"])
    requested["OUTPUT_DIR"] = str(run_dir)
    if "OUTPUT_DIR" not in declared:
        log.warning("%s does not declare OUTPUT_DIR in its parameters cell", stem)
    passed = {k: v for k, v in requested.items() if k in declared}
    dropped = sorted(k for k in requested if k not in declared)
    if dropped:
        log.debug("%s: dropping undeclared parameters %s", stem, dropped)
    resolved = {**{k: _literal(v.get("default", "")) for k, v in declared.items()}, **passed}
    executed, target_html = run_dir / f"{stem}.ipynb", run_dir / f"{stem}.html"
    target_html.unlink(missing_ok=True)
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    error = traceback = None
    failure: BaseException | None = None
    try:
        pm.execute_notebook(str(nb_path), str(executed), parameters=passed, kernel_name=kernel_name,
                            cwd=str(nb_path.parent), progress_bar=progress, log_output=log_output,
                            execution_timeout=execution_timeout)
    except Exception as exc:  # noqa: BLE001 - a failed notebook is a result, not a crash of the suite
        failure, error, traceback = exc, _describe_error(exc), _traceback_tail(exc)
        log.error("%s failed: %s", stem, error)
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
    atomic_write_json(folder / "run.json", {
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
    env_values = {name: value for name, value in os.environ.items()
                  if _SECRET_ENV.search(name) and len(value) >= 8 and not value.startswith(("/", "~"))}
    problems = []
    for path in paths:
        text = Path(path).read_bytes().decode("utf-8", errors="ignore")
        match = _SK_KEY.search(text)
        if match:
            problems.append(f"{path}: API-key-like string {match.group()[:5]}...")
        problems += [f"{path}: value of ${name}" for name, value in env_values.items() if value in text]
    if problems:
        raise SecretLeakError("possible secrets in the run's outputs:\n  " + "\n  ".join(problems))


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{margin-bottom:.2em}.meta{color:#555;font-size:.92em}
section{border-top:1px solid #ddd;margin-top:2em;padding-top:1em}table{border-collapse:collapse;font-size:.88em;
margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f5f5f5}
.badge{display:inline-block;padding:.15em .6em;border-radius:.8em;color:#fff;font-weight:600;font-size:.85em}
.green{background:#2e7d32}.amber{background:#ef8f00}.grey{background:#757575}.red{background:#c62828}
.claim{font-style:italic}.effect{font-size:1.05em}pre{background:#fbeaea;padding:.6em;overflow-x:auto;
white-space:pre-wrap}img{max-width:100%;border:1px solid #eee;margin:.4em 0}.figs{display:flex;flex-wrap:wrap;
gap:.6em}.figs img{max-width:48%}details{margin:.4em 0}"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def _scalars(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        if isinstance(v, dict) and not prefix:
            rows += _scalars(v, f"{k}.")
        elif v is None or isinstance(v, (str, int, float, bool)):
            rows.append((f"{prefix}{k}", v))
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _link(run_dir: Path, rel: str) -> str:
    return quote(Path(rel).as_posix()) if (run_dir / rel).exists() else ""


def _section(run_dir: Path, stem: str, run: dict[str, Any], res: dict[str, Any] | None) -> str:
    failed = run.get("status") == "failed"
    verdict = "failed" if failed else (res or {}).get("verdict") or "no result recorded"
    title = (res or {}).get("title") or stem
    out = [f'<section id="{_esc(stem)}"><h2>{_esc(title)}</h2>',
           f'<p><span class="badge {_BADGES.get(verdict, "grey")}">{_esc(verdict)}</span> '
           f'<span class="meta">{_esc(stem)} &middot; wall time {_fmt(run.get("wall_time_s"))} s</span></p>']
    if failed:
        out.append(f"<p><b>This notebook failed.</b></p><pre>{_esc(run.get('error') or 'unknown error')}</pre>")
        if run.get("traceback"):
            out.append(f"<details><summary>traceback</summary><pre>{_esc(run['traceback'])}</pre></details>")
    if res:
        out.append(f'<p class="claim">Claim: {_esc(res.get("claim", ""))}</p>')
        eff = res.get("effect") or {}
        if eff:
            out.append(f'<p class="effect">Measured: <b>{_esc(eff.get("name", "effect"))} = {_esc(_fmt(eff.get("value")))}'
                       f'</b> (95% CI {_esc(_fmt(eff.get("ci_low")))} to {_esc(_fmt(eff.get("ci_high")))})'
                       f' &nbsp;|&nbsp; Paper: {_esc(res.get("paper", "n/a"))}</p>')
        if res.get("notes"):
            out.append(f'<p class="meta">Notes / data source: {_esc(res["notes"])}</p>')
        figs = []
        for fig in res.get("figures") or []:
            href = _link(run_dir, f"{stem}/{fig}")
            figs.append(f'<img src="{href}" alt="{_esc(fig)}">' if href else f"<p>missing figure {_esc(fig)}</p>")
        if figs:
            out.append('<div class="figs">' + "".join(figs) + "</div>")
        rows = _scalars(res.get("metrics") or {})
        if rows:
            out.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
                f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows) + "</table>")
    elif not failed:
        out.append("<p>The notebook ran but recorded no metrics.json.</p>")
    params = run.get("parameters") or (res or {}).get("params") or {}
    if params:
        out.append("<details><summary>parameters</summary><table>" + "".join(
            f"<tr><td>{_esc(k)}</td><td>{_esc(json.dumps(v, default=str))}</td></tr>" for k, v in params.items())
            + "</table></details>")
    href = _link(run_dir, f"{stem}.html") or _link(run_dir, f"{stem}.ipynb")
    if href:
        out.append(f'<p><a href="{href}">Executed notebook</a></p>')
    return "\n".join(out) + "</section>"


def build_report(run_dir: str | os.PathLike, title: str = "Emergent misalignment: reproduction report") -> Path:
    """Write `run_dir/index.html` from each `<stem>/run.json` and `<stem>/metrics.json`; return its path."""
    run_dir = Path(run_dir).resolve()
    stems = sorted({p.parent.name for pat in ("*/run.json", "*/metrics.json") for p in run_dir.glob(pat)})
    entries = [(s, _read_json(run_dir / s / "run.json") or {}, _read_json(run_dir / s / "metrics.json")) for s in stems]
    machine = next((r["machine"] for _, r, _ in entries if r.get("machine")), None) or machine_info()
    dates = sorted(r["started_at"] for _, r, _ in entries if r.get("started_at"))
    total = sum(float(r.get("wall_time_s") or 0) for _, r, _ in entries)
    n_failed = sum(r.get("status") == "failed" for _, r, _ in entries)
    gpus = ", ".join(machine.get("gpus") or []) or "none"
    summary_rows = []
    for s, r, res in entries:
        verdict = "failed" if r.get("status") == "failed" else (res or {}).get("verdict") or "no result recorded"
        eff = (res or {}).get("effect") or {}
        effect = f"{_fmt(eff.get('value'))} [{_fmt(eff.get('ci_low'))}, {_fmt(eff.get('ci_high'))}]" if eff else ""
        summary_rows.append(f'<tr><td><a href="#{_esc(s)}">{_esc(s)}</a></td><td><span class="badge '
                            f'{_BADGES.get(verdict, "grey")}">{_esc(verdict)}</span></td><td>{_esc(effect)}</td>'
                            f'<td>{_fmt(r.get("wall_time_s"))}</td></tr>')
    doc = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">Run {_esc(run_dir.name)} &middot; {_esc(dates[0] if dates else "date unknown")}'
        f" &middot; Python {_esc(machine.get('python'))}, torch {_esc(machine.get('torch') or 'not installed')}, "
        f"{_esc(machine.get('cpu_count'))} CPUs, GPU: {_esc(gpus)} &middot; total wall time {total / 60:.1f} min"
        f" &middot; {len(entries)} notebook(s), {n_failed} failed</p>",
    ]
    if entries:
        doc.append("<table><tr><th>notebook</th><th>verdict</th><th>effect [95% CI]</th><th>wall time (s)</th></tr>"
                   + "".join(summary_rows) + "</table>")
    else:
        doc.append("<p>No notebook results found in this run folder.</p>")
    doc += [_section(run_dir, s, r, res) for s, r, res in entries]
    doc.append(f'<p class="meta">Generated {datetime.now().astimezone().isoformat(timespec="seconds")}.</p></body></html>')
    return atomic_write_text(run_dir / "index.html", "\n".join(doc) + "\n")


def run_all(
    run_dir: str | os.PathLike,
    params_file: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
    notebook_dir: str | os.PathLike | None = None,
    raise_on_failure: bool = True,
    execution_timeout: int | None = None,
) -> Path:
    """Run notebooks in order (going on after failures), check for secrets, build the report; return index.html.

    With `raise_on_failure`, raises NotebookRunError (carrying `.index` and `.failed`) after the report is
    written if any notebook failed. Raises SecretLeakError, without writing the index, if an output leaks a secret.
    """
    notebooks = [resolve_notebook(k, notebook_dir) for k in only] if only else list_notebooks(notebook_dir)
    if not notebooks:
        raise ValueError(f"no notebooks to run in {notebook_dir or repo_root() / 'notebooks'}")
    if params_file is not None:
        with open(params_file, encoding="utf-8") as f:
            sections = set((yaml.safe_load(f) or {}).keys()) - {"defaults"}
        unknown = sections - {p.stem for p in list_notebooks(notebook_dir or notebooks[0].parent)}
        if unknown:
            log.warning("%s has sections for unknown notebooks: %s", params_file, sorted(unknown))
    run_dir = Path(run_dir).resolve()
    results = []
    for nb in notebooks:
        log.info("running %s", nb.stem)
        results.append(run_notebook(nb, run_dir, params_file=params_file, overrides=overrides, kernel_name=kernel_name,
                                    progress=progress, execution_timeout=execution_timeout))
    check_no_secrets(run_files(run_dir))
    index = build_report(run_dir)
    failed = [r["stem"] for r in results if r["status"] != "ok"]
    if failed and raise_on_failure:
        raise NotebookRunError(index, failed)
    return index


def default_run_dir(name: str | None = None) -> Path:
    """`<repo>/reports/<name or YYYYmmdd-HHMMSS>` (not created)."""
    return repo_root() / "reports" / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))


def latest_run_dir() -> Path | None:
    """The most recently modified folder under `<repo>/reports`, or None."""
    root = repo_root() / "reports"
    dirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return max(dirs, key=lambda p: p.stat().st_mtime) if dirs else None

