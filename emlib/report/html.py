"""Run all finding notebooks and build the suite's HTML report from their `run.json` and `metrics.json`.

Layout of a run folder `run_dir`: `<stem>.ipynb` / `<stem>.html` (executed notebook), `<stem>/` (its
OUTPUT_DIR artifacts: metrics.json, figures, run.json) and `index.html` (the report).
"""

from __future__ import annotations

import html
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import yaml

from ..core.cache import atomic_write_text
from ..core.errors import ParamError
from .runner import (
    check_no_secrets, list_notebooks, machine_info, repo_root, resolve_notebook, resolve_parameters, run_files, run_notebook,
)

__all__ = ["NotebookRunError", "build_report", "run_all", "default_run_dir"]

log = logging.getLogger(__name__)
_BADGES = {
    "reproduced": "green", "meets targets": "green", "partly reproduced": "amber",
    "not reproduced at this scale": "grey", "misses targets": "grey", "failed": "red",
}


class NotebookRunError(RuntimeError):
    """Raised by run_all (after the report is written) when some notebooks failed."""

    def __init__(self, index: Path, failed: list[str]):
        super().__init__(f"{len(failed)} notebook(s) failed: {', '.join(failed)}; report at {index}")
        self.index, self.failed = index, failed


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{margin-bottom:.2em}.meta{color:#555;font-size:.92em}.warn{background:#fff4d6;padding:.3em .6em}
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
        rep = res.get("replication")
        if rep:
            reff = rep.get("effect") or {}
            out.append(f'<p class="effect">Replication on fresh seeds {_esc(", ".join(map(str, rep.get("seeds", []))))}: '
                       f'<span class="badge {_BADGES.get(rep.get("verdict"), "grey")}">{_esc(rep.get("verdict"))}</span>'
                       + (f' {_esc(_fmt(reff.get("value")))} (95% CI {_esc(_fmt(reff.get("ci_low")))} to '
                          f'{_esc(_fmt(reff.get("ci_high")))})' if reff else "") + "</p>")
        for fallback in res.get("fallbacks") or []:
            out.append(f'<p class="warn"><b>Built-in data stood in:</b> {_esc(fallback)}</p>')
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
        rep = (res or {}).get("replication") or {}
        replication = (f'<span class="badge {_BADGES.get(rep.get("verdict"), "grey")}">{_esc(rep.get("verdict"))}</span>'
                       if rep else "not run")
        summary_rows.append(f'<tr><td><a href="#{_esc(s)}">{_esc(s)}</a></td><td><span class="badge '
                            f'{_BADGES.get(verdict, "grey")}">{_esc(verdict)}</span></td><td>{_esc(effect)}</td>'
                            f'<td>{replication}</td><td>{_fmt(r.get("wall_time_s"))}</td></tr>')
    doc = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">Run {_esc(run_dir.name)} &middot; {_esc(dates[0] if dates else "date unknown")}'
        f" &middot; Python {_esc(machine.get('python'))}, torch {_esc(machine.get('torch') or 'not installed')}, "
        f"{_esc(machine.get('cpu_count'))} CPUs, GPU: {_esc(gpus)} &middot; total wall time {total / 60:.1f} min"
        f" &middot; {len(entries)} notebook(s), {n_failed} failed</p>",
    ]
    if entries:
        doc.append("<table><tr><th>notebook</th><th>verdict</th><th>effect [95% CI]</th><th>on fresh seeds</th>"
                   "<th>wall time (s)</th></tr>"
                   + "".join(summary_rows) + "</table>")
    else:
        doc.append("<p>No notebook results found in this run folder.</p>")
    doc += [_section(run_dir, s, r, res) for s, r, res in entries]
    doc.append(f'<p class="meta">Generated {datetime.now().astimezone().isoformat(timespec="seconds")}.</p></body></html>')
    return atomic_write_text(run_dir / "index.html", "\n".join(doc) + "\n", scan=True)


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
    validate: Callable[[str, dict[str, Any]], None] | None = None,
) -> Path:
    """Run notebooks in order (going on after failures), check for secrets, build the report; return index.html.

    Every notebook's parameters are checked before the first one runs: an override that no selected notebook declares
    is a ParamError (one that some declare is dropped for the others), and so is `validate`'s objection to any.
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
    declared: set[str] = set()
    for nb in notebooks:  # check every notebook's parameters before the first one runs
        passed, resolved, _ = resolve_parameters(nb, params_file, overrides, strict_overrides=False)
        declared |= set(passed)
        if validate is not None:
            validate(nb.stem, {k: v for k, v in resolved.items() if k != "OUTPUT_DIR"})
    if unknown := sorted(set(overrides or {}) - declared):
        raise ParamError(f"-p: unknown parameter {', '.join(unknown)}: no notebook of this run declares it")
    run_dir = Path(run_dir).resolve()
    results = []
    for nb in notebooks:
        log.info("running %s", nb.stem)
        results.append(run_notebook(nb, run_dir, params_file=params_file, overrides=overrides, kernel_name=kernel_name,
                                    progress=progress, execution_timeout=execution_timeout, strict_overrides=False,
                                    validate=validate))
    check_no_secrets(run_files(run_dir))
    index = build_report(run_dir)
    failed = [r["stem"] for r in results if r["status"] != "ok"]
    if failed and raise_on_failure:
        raise NotebookRunError(index, failed)
    return index


def default_run_dir(name: str | None = None) -> Path:
    """`<repo>/reports/<name or YYYYmmdd-HHMMSS>` (not created)."""
    return repo_root() / "reports" / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
