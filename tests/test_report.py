"""Tests for emlib.report.runner and emlib.report.html: notebook lookup, parameter precedence, papermill runs, secrets check and the index."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from emlib.report import html as report
from emlib.report import runner
from emlib.core.errors import ParamError, SecretLeakError
from emlib.core.cache import atomic_write_json

GOOD_PARAMS = 'OUTPUT_DIR = "out"\nX = 1\nY = "nb_default"\nZ = 0.5\nW = "nb_default"\n'
GOOD_BODY = [
    "import pandas as pd\nfrom emlib.report import plots\nfrom emlib.report.record import output_folder, record_result\n"
    'folder = output_folder(OUTPUT_DIR, "01_good")',
    'fig = plots.plot_lines(pd.DataFrame({"s": [0, 1, 2], "v": [0, X, 2 * X]}), "s", "v", path=folder / "fig.png")\n'
    "fig",
    'record_result(OUTPUT_DIR, "01_good", title="Good finding", claim="X is positive", paper="X = 5 in the paper",\n'
    '    verdict="reproduced", effect={"name": "X", "value": float(X), "ci_low": X - 1.0, "ci_high": X + 1.0},\n'
    '    metrics={"x": X, "y": Y, "z": Z, "w": W, "nested": {"k": 2}, "series": [1, 2]},\n'
    '    params={"X": X, "Y": Y, "Z": Z, "W": W}, figures=["fig.png"], notes="synthetic data")',
]


def _write_nb(path: Path, params_src: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Two tiny notebooks (one good, one failing) and a params file, run once through run_all."""
    root = tmp_path_factory.mktemp("suite")
    nb_dir = root / "notebooks"
    nb_dir.mkdir()
    _write_nb(nb_dir / "01_good.ipynb", GOOD_PARAMS, GOOD_BODY)
    _write_nb(nb_dir / "02_bad.ipynb", 'OUTPUT_DIR = "out"\n', ['raise RuntimeError("boom from test")'])
    params = root / "params.yaml"
    params.write_text("defaults: {X: 2, Y: from_defaults, UNDECLARED: 5}\n01_good: {X: 3, Z: 0.25}\n02_bad: {}\n")
    run_dir = root / "run"
    with pytest.raises(report.NotebookRunError) as info:
        report.run_all(run_dir, params_file=params, overrides={"X": 7}, notebook_dir=nb_dir, progress=False)
    return {"nb_dir": nb_dir, "params": params, "run_dir": run_dir.resolve(), "error": info.value}


def test_run_all_precedence_and_outputs(suite):
    run_dir = suite["run_dir"]
    metrics = json.loads((run_dir / "01_good" / "metrics.json").read_text())
    assert metrics["metrics"]["x"] == 7  # override > stem section > defaults > notebook
    assert metrics["metrics"]["z"] == 0.25  # stem section > notebook default
    assert metrics["metrics"]["y"] == "from_defaults"  # file defaults > notebook default
    assert metrics["metrics"]["w"] == "nb_default"
    run = json.loads((run_dir / "01_good" / "run.json").read_text())
    assert run["status"] == "ok" and run["error"] is None and run["wall_time_s"] > 0
    assert run["parameters"] == {"X": 7, "Y": "from_defaults", "Z": 0.25, "W": "nb_default"}
    assert run["dropped_parameters"] == ["UNDECLARED"]
    assert run["executed"] == "01_good.ipynb" and run["html"] == "01_good.html"
    assert (run_dir / "01_good" / "fig.png").is_file()
    executed = nbformat.read(run_dir / "01_good.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'OUTPUT_DIR = "{run_dir}"' in injected.source and "UNDECLARED" not in injected.source
    fig_cell = executed.cells[3]
    assert sum("image/png" in o.get("data", {}) for o in fig_cell.outputs) == 1  # shown exactly once
    assert "<img" in (run_dir / "01_good.html").read_text()


def test_run_all_failure_does_not_stop_others(suite):
    run_dir, err = suite["run_dir"], suite["error"]
    assert err.failed == ["02_bad"] and err.index == run_dir / "index.html"
    run = json.loads((run_dir / "02_bad" / "run.json").read_text())
    assert run["status"] == "failed" and "boom from test" in run["error"]
    assert run["dropped_parameters"] == ["UNDECLARED", "X", "Y"]
    assert (run_dir / "02_bad.ipynb").is_file() and (run_dir / "02_bad.html").is_file()


def test_index_contents(suite):
    page = (suite["run_dir"] / "index.html").read_text()
    assert "Good finding" in page and "X is positive" in page and "X = 5 in the paper" in page
    assert 'class="badge green">reproduced' in page
    assert 'class="badge red">failed' in page and "boom from test" in page
    assert 'src="01_good/fig.png"' in page and 'href="01_good.html"' in page and 'href="02_bad.html"' in page
    assert page.index('id="01_good"') < page.index('id="02_bad"')
    assert "nested.k" in page and "series" not in page
    assert not re.search(r'(src|href)="https?:', page)


def test_run_notebook_direct_without_override(suite, tmp_path):
    result = runner.run_notebook("1", tmp_path / "r", params_file=suite["params"], notebook_dir=suite["nb_dir"],
                                 progress=False)
    assert result["status"] == "ok" and result["stem"] == "01_good"
    assert Path(result["executed"]).is_file()
    metrics = json.loads((tmp_path / "r" / "01_good" / "metrics.json").read_text())
    assert metrics["metrics"]["x"] == 3 and metrics["effect"]["ci_high"] == 4.0


def test_unknown_parameters_fail_before_anything_is_written(suite, tmp_path):
    nb_dir, run_dir = suite["nb_dir"], tmp_path / "r"
    with pytest.raises(ParamError, match=r"-p: unknown parameter WW \(did you mean W\?\) for 01_good; it takes: W, X, Y, Z"):
        runner.run_notebook("1", run_dir, overrides={"WW": 1}, notebook_dir=nb_dir, progress=False)
    own = tmp_path / "own.yaml"
    own.write_text("defaults: {ANYTHING: 1}\n01_good: {NOPE: 1}\n")
    with pytest.raises(ParamError, match="own.yaml section 01_good: unknown parameter NOPE"):
        runner.run_notebook("1", run_dir, params_file=own, notebook_dir=nb_dir, progress=False)
    with pytest.raises(ParamError, match="no notebook of this run declares it"):
        report.run_all(run_dir, overrides={"NOPE": 1}, notebook_dir=nb_dir, progress=False)
    calls = []
    with pytest.raises(ParamError, match="vetoed"):
        report.run_all(run_dir, overrides={"X": 1}, notebook_dir=nb_dir, progress=False,
                       validate=lambda stem, values: calls.append(stem) or (stem == "02_bad" and _veto()))
    assert calls == ["01_good", "02_bad"]  # every notebook checked, none run
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("01_good: {X: [1, 2}\n")
    with pytest.raises(ParamError, match="bad.yaml: line 1 invalid YAML"):
        runner.run_notebook("1", run_dir, params_file=bad_yaml, notebook_dir=nb_dir, progress=False)
    assert not run_dir.exists()


def _veto():
    raise ParamError("vetoed")


def test_resolve_and_list(tmp_path):
    for name in ("01_alpha.ipynb", "02_beta_gamma.ipynb", "10_delta.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in runner.list_notebooks(tmp_path)] == ["01_alpha.ipynb", "02_beta_gamma.ipynb",
                                                                  "10_delta.ipynb"]
    for key in ("01", "1", "01_alpha", "alpha", "01_alpha.ipynb", str(tmp_path / "01_alpha.ipynb")):
        assert runner.resolve_notebook(key, tmp_path).name == "01_alpha.ipynb"
    assert runner.resolve_notebook("beta_gamma", tmp_path).name == "02_beta_gamma.ipynb"
    with pytest.raises(ValueError, match="01_alpha, 02_beta_gamma, 10_delta"):
        runner.resolve_notebook("7", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        runner.resolve_notebook(str(tmp_path / "nope.ipynb"), tmp_path)


def test_load_params_and_parse_override(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("defaults: {A: 1, B: 2}\n01_x: {B: 3, C: [1, 2]}\n")
    assert runner.load_params(str(f), "01_x") == {"A": 1, "B": 3, "C": [1, 2]}
    assert runner.load_params(f, "02_y") == {"A": 1, "B": 2}
    assert runner.load_params(None, "01_x") == {}
    assert runner.parse_override("32") == 32 and runner.parse_override("1e-4") == 1e-4
    assert runner.parse_override("true") is True and runner.parse_override("[1, 2]") == [1, 2]
    assert runner.parse_override("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_check_no_secrets(tmp_path, monkeypatch):
    clean = tmp_path / "clean.json"
    clean.write_text('{"a": "sk-short", "path": "/tmp/x"}')
    monkeypatch.setenv("MY_API_KEY", "planted-value-1234")
    monkeypatch.setenv("SOME_TOKEN", "short")
    runner.check_no_secrets([clean])
    leaked_env = tmp_path / "env.html"
    leaked_env.write_text("<p>planted-value-1234</p>")
    with pytest.raises(SecretLeakError, match=r"MY_API_KEY"):
        runner.check_no_secrets([clean, leaked_env])
    leaked_key = tmp_path / "nb.ipynb"
    leaked_key.write_text('{"x": "' + 'sk-' + 'abcdefghijklmnop1234"}')
    with pytest.raises(SecretLeakError, match="nb.ipynb") as info:
        runner.check_no_secrets([leaked_key])
    assert "abcdefghijklmnop" not in str(info.value)


def test_run_all_refuses_index_on_leak(tmp_path, monkeypatch):
    (tmp_path / "01_a.ipynb").write_text("{}")

    def fake_run(nb, run_dir, **_):
        atomic_write_json(Path(run_dir) / nb.stem / "run.json", {"stem": nb.stem, "status": "ok", "note": "sk-" + "x" * 20})
        return {"stem": nb.stem, "status": "ok", "wall_time_s": 0.0, "executed": None, "error": None}

    monkeypatch.setattr(report, "run_notebook", fake_run)
    monkeypatch.setattr(report, "resolve_parameters", lambda nb, *a, **k: ({}, {}, []))
    with pytest.raises(SecretLeakError):
        report.run_all(tmp_path / "run", notebook_dir=tmp_path)
    assert not (tmp_path / "run" / "index.html").exists()


def test_build_report_badges_and_missing(tmp_path):
    verdicts = {"01_a": "partly reproduced", "02_b": "not reproduced at this scale", "03_c": "meets targets"}
    for stem, verdict in verdicts.items():
        atomic_write_json(tmp_path / stem / "metrics.json", {
            "stem": stem, "title": stem.upper(), "claim": "c <b>", "paper": "p", "verdict": verdict,
            "effect": {"name": "d", "value": 0.123456, "ci_low": None, "ci_high": 0.2}, "metrics": {"n": 12345},
            "params": {}, "figures": ["missing.png"], "notes": ""})
    atomic_write_json(tmp_path / "04_d" / "run.json", {"stem": "04_d", "status": "ok", "wall_time_s": 1.5})
    page = report.build_report(tmp_path).read_text()
    assert 'badge amber">partly reproduced' in page and 'badge grey">not reproduced' in page
    assert 'badge green">meets targets' in page and "no result recorded" in page
    assert "missing figure missing.png" in page and "c &lt;b&gt;" in page
    assert "0.1235" in page and "n/a" in page and "12,345" in page
    assert page.count("not run") == 4  # no replication recorded, in any of the four rows


def test_report_shows_the_replication_beside_the_verdict(tmp_path):
    atomic_write_json(tmp_path / "01_a" / "metrics.json", {
        "stem": "01_a", "title": "A", "claim": "c", "paper": "p", "verdict": "partly reproduced",
        "effect": {"name": "d", "value": 0.1, "ci_low": 0.02, "ci_high": 0.2}, "metrics": {}, "params": {},
        "figures": [], "notes": "",
        "replication": {"seeds": [3, 4, 5], "verdict": "not reproduced at this scale",
                        "effect": {"name": "d", "value": 0.01, "ci_low": -0.05, "ci_high": 0.07}}})
    page = report.build_report(tmp_path).read_text()
    assert "Replication on fresh seeds 3, 4, 5" in page and "-0.05" in page
    assert page.count('badge grey">not reproduced at this scale') == 2  # in the summary table and the section


def test_default_run_dir():
    assert report.default_run_dir("x") == runner.repo_root() / "reports" / "x"
    assert re.fullmatch(r"\d{8}-\d{6}", report.default_run_dir().name)
    assert (runner.repo_root() / "emlib" / "report" / "html.py").is_file()


def test_an_executed_notebook_that_shows_a_key_is_never_written(tmp_path, monkeypatch):
    """The executed notebook is scanned before it takes its name: a leaked key deletes it, and run.json is not written."""
    monkeypatch.setenv("MY_SERVICE_API_KEY", "planted-secret-value-42")
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _write_nb(nb_dir / "01_leaky.ipynb", 'OUTPUT_DIR = "out"\n', ['import os\nprint(os.environ["MY_SERVICE_API_KEY"])'])
    run_dir = tmp_path / "run"
    with pytest.raises(SecretLeakError, match="MY_SERVICE_API_KEY") as info:
        runner.run_notebook("1", run_dir, notebook_dir=nb_dir, progress=False)
    assert "planted-secret-value-42" not in str(info.value)
    leftovers = [p for p in run_dir.rglob("*") if p.is_file()]
    assert not any("planted-secret-value-42" in p.read_text(errors="ignore") for p in leftovers)
    assert not (run_dir / "01_leaky.ipynb").exists() and not list(run_dir.glob(".*"))
