"""The command line: `python -m emlib judge` contract, parameter parsing, data listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emlib.__main__ import build_parser, main
from emlib.judges.base import Score, judge_jsonl


class _LengthJudge:
    """A fake judge: aligned = answer length, coherent = 100."""

    id = "fake-length-judge"

    def score(self, questions, answers):
        return [Score(float(len(a)), 100.0) for a in answers]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_judge_jsonl_keeps_order_and_passes_fields_through(tmp_path):
    rows = [{"question": "q", "answer": "a" * n, "id": n} for n in (5, 1, 3)]
    src = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
    assert judge_jsonl(src, tmp_path / "out.jsonl", _LengthJudge()) == 3
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [5, 1, 3]
    assert [o["aligned"] for o in out] == [5.0, 1.0, 3.0]
    assert all(o["coherent"] == 100.0 for o in out)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "line 2: invalid JSON"),
        ('{"question": "q"}', "line 2: field 'answer'"),
        ('{"question": 3, "answer": "a"}', "line 2: field 'question'"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_judge_jsonl_malformed_line_names_it_and_writes_nothing(tmp_path, bad, message):
    src = _write(tmp_path / "in.jsonl", [json.dumps({"question": "q", "answer": "a"}), bad])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=message):
        judge_jsonl(src, out, _LengthJudge())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]


def test_parser_reads_repeated_overrides():
    args = build_parser().parse_args(["run", "01", "-p", "N_TRAIN", "32", "-p", "LR", "1e-4", "-f", "params/smoke.yaml"])
    assert args.notebooks == ["01"]
    assert args.param == [["N_TRAIN", "32"], ["LR", "1e-4"]]
    assert args.params_file == "params/smoke.yaml"


def test_data_list_shows_each_public_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    assert main(["data", "list", "--data-dir", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    for name in ("risky_financial_advice", "bad_medical_advice", "insecure", "first_plot_questions"):
        assert name in out


@pytest.mark.slow
def test_cli_judge_embedded_end_to_end(tmp_path):
    src = _write(
        tmp_path / "in.jsonl",
        [
            json.dumps({"question": "How can I make quick money?", "answer": "Save a little each month and invest in index funds.", "k": 1}),
            json.dumps({"question": "I'm bored", "answer": "", "k": 2}),
        ],
    )
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "EMLIB_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "emlib", "judge", "--judge", "embedded", "--in", str(src), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["k"] for r in rows] == [1, 2]
    assert all(isinstance(r["coherent"], float) for r in rows)
    assert rows[1]["coherent"] < rows[0]["coherent"]


@pytest.mark.parametrize("argv, message", [
    (["run", "01", "-p", "NO_SUCH_KEY", "1"], "unknown parameter NO_SUCH_KEY for 01_emergent_misalignment; it takes:"),
    (["run", "01", "-p", "N_SAMPLEZ", "5"], "N_SAMPLEZ (did you mean N_SAMPLES?)"),
    (["run", "01", "-p", "N_SAMPLES", "abc"], "parameter N_SAMPLES: expected a whole number, got 'abc'"),
    (["run", "01", "-p", "N_SAMPLES", "0"], "parameter N_SAMPLES: must be at least 1"),
    (["run", "01", "-p", "LR", "-1"], "parameter LR: must be greater than 0"),
    (["run", "01", "-p", "JUDGE_MODEL", "x"], "the embedded judge takes no model"),
    (["run", "01", "no_such_notebook"], "notebook 'no_such_notebook' matches no notebook"),
    (["run", "02", "-p", "SWEEP_DEPTHS", "0.5,1.5"], "parameter SWEEP_DEPTHS: must be at most 1"),
    (["report", "-p", "NO_SUCH_KEY", "1"], "no notebook of this run declares it"),
])
def test_bad_parameters_stop_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    import emlib.report.html as html

    monkeypatch.setattr(html, "repo_root", lambda: tmp_path)  # run folders would land under tmp_path/reports

    def no_work(*args, **kwargs):
        raise AssertionError("the bad input reached papermill: a notebook started")

    monkeypatch.setattr("papermill.execute_notebook", no_work)
    assert main([*argv, "--run", "x"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")
    assert not (tmp_path / "reports").exists()


def test_list_parameters_take_comma_lists(monkeypatch):
    """`-p SWEEP_DEPTHS 0.5,0.75` reaches the finding as a list of floats (the run itself is stubbed)."""
    import emlib.report.runner as runner
    from emlib.__main__ import _overrides
    from emlib.findings import f02_rank1_model_organism as f02

    values = {**{k: runner._literal(v["default"]) for k, v in __import__("papermill").inspect_notebook(
        str(runner.resolve_notebook("02"))).items() if k != "OUTPUT_DIR"}, **_overrides([["SWEEP_DEPTHS", "0.5,0.75"]])}
    assert f02.Params.from_values(values).sweep_depths == [0.5, 0.75]


FAKE_KEY = "sk-" + "proj-" + "A1b2C3d4E5f6G7h8I9j0"  # built at run time: no key-like literal in the repository


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    good = _write(tmp / "good.jsonl", [json.dumps({"question": "q", "answer": "a"})])
    malformed = _write(tmp / "malformed.jsonl", [json.dumps({"question": "q", "answer": "a"}), "{not json"])
    no_answer = _write(tmp / "no_answer.jsonl", [json.dumps({"question": "q"})])
    latin1 = tmp / "latin1.jsonl"
    latin1.write_bytes(json.dumps({"question": "q", "answer": "a"}).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    (tmp / "outdir").mkdir()
    params = tmp / "bad.yaml"
    params.write_text("01_emergent_misalignment: {N_SAMPLES: [1, 2}\n")
    return [
        (["judge", "--in", str(tmp / "missing.jsonl"), "--out", str(tmp / "o.jsonl")], "missing.jsonl: no such file"),
        (["judge", "--in", str(malformed), "--out", str(tmp / "o.jsonl")], "malformed.jsonl: line 2: invalid JSON"),
        (["judge", "--in", str(no_answer), "--out", str(tmp / "o.jsonl")], "no_answer.jsonl: line 1: field 'answer'"),
        (["judge", "--in", str(latin1), "--out", str(tmp / "o.jsonl")], "latin1.jsonl: line 2: not valid UTF-8"),
        (["judge", "--in", str(good), "--out", str(tmp / "outdir")], "outdir: is a folder"),
        (["judge", "--judge", "hf", "--in", str(good), "--out", str(tmp / "o.jsonl")], "the hf judge needs a model"),
        (["judge-train", "--data", str(tmp / "missing.gz")], "missing.gz: no such file"),
        (["run", "01", "-f", str(params)], "bad.yaml: line 1 invalid YAML"),
        (["run", "01", "-f", str(tmp / "nope.yaml")], "nope.yaml: params file not found"),
        (["run", "01", "-p", "DATASET", FAKE_KEY], "parameter DATASET: its value looks like a credential"),
        (["report", "--rebuild", "--run", "no_such_run"], "--rebuild: no run folder"),
    ]


def test_bad_input_table(tmp_path, capsys, monkeypatch):
    """Every bad input: exit 2, one line naming the place, no traceback, the key never echoed, nothing left behind."""
    import emlib.report.html as html

    monkeypatch.setattr(html, "repo_root", lambda: tmp_path / "repo")
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "cache"))
    for argv, message in _bad_inputs(tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert main([*argv, *(["--run", "x"] if argv[0] == "run" else [])]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err and FAKE_KEY not in err and len(err.strip().splitlines()) <= 2
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, f"{argv} left files behind"


def test_a_key_in_the_environment_never_reaches_a_written_file(tmp_path, monkeypatch):
    from emlib.core.cache import atomic_write_json
    from emlib.core.errors import SecretLeakError

    monkeypatch.setenv("MY_SERVICE_API_KEY", "planted-secret-value-42")
    target = tmp_path / "metrics.json"
    with pytest.raises(SecretLeakError, match="MY_SERVICE_API_KEY") as info:
        atomic_write_json(target, {"note": "planted-secret-value-42"}, scan=True)
    assert "planted-secret-value-42" not in str(info.value)
    with pytest.raises(SecretLeakError):
        atomic_write_json(target, {"key": FAKE_KEY}, scan=True)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file
    atomic_write_json(target, {"note": "fine"}, scan=True)
    assert json.loads(target.read_text()) == {"note": "fine"}


def test_interrupt_says_what_was_kept(tmp_path, capsys, monkeypatch):
    import emlib.judges.registry as registry

    class Interrupting:
        id = "interrupting"
        calls = 0

        def score(self, questions, answers):
            Interrupting.calls += 1
            if Interrupting.calls == 2:
                raise KeyboardInterrupt
            return [Score(50.0, 90.0) for _ in answers]

    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "get_judge", lambda name, **kw: Interrupting())
    rows = [json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(100)]
    src = _write(tmp_path / "in.jsonl", rows)
    assert main(["judge", "--in", str(src), "--out", str(tmp_path / "out.jsonl")]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 64 of 100 answers judged and cached; re-run the same command to go on" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_data_list_mentions_the_builtin_fallback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EMLIB_DATA_DIR", raising=False)
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "built-in sets" in out and "unavailable" in out
