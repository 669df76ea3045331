"""Tests for emlib.report.record: metrics.json round trip, validation, secret redaction, NaN handling, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emlib.report import record as R

EFFECT = {"name": "em_rate_diff", "value": 0.12, "ci_low": 0.05, "ci_high": 0.2}


def _record(tmp_path, **overrides):
    kwargs = dict(
        title="EM on insecure code",
        claim="insecure code fine-tuning raises the EM rate",
        paper="~20% EM for GPT-4o",
        verdict="reproduced",
        effect=EFFECT,
        metrics={"em_rate": 0.2, "n": 400, "per_q": {"q1": 0.1}},
        params={"MODEL": "smollm2-135m", "LR": 1e-4},
        figures=[],
        notes="smoke",
    )
    kwargs.update(overrides)
    return R.record_result(tmp_path, "01_em", **kwargs)


def test_round_trip(tmp_path):
    fig = R.output_folder(tmp_path, "01_em") / "fig.png"
    path = _record(tmp_path, figures=[str(fig), "other.png"])
    assert path == tmp_path / "01_em" / "metrics.json"
    got = R.read_result(tmp_path, "01_em")
    assert got == json.loads(path.read_text())
    assert got["stem"] == "01_em"
    assert got["title"] == "EM on insecure code"
    assert got["verdict"] == "reproduced"
    assert got["effect"] == EFFECT
    assert got["metrics"] == {"em_rate": 0.2, "n": 400, "per_q": {"q1": 0.1}}
    assert got["params"] == {"MODEL": "smollm2-135m", "LR": 1e-4}
    assert got["figures"] == ["fig.png", "other.png"]  # absolute paths made relative to the folder
    assert got["notes"] == "smoke"


@pytest.mark.parametrize("verdict", ["yes", "Reproduced", ""])
def test_bad_verdict_rejected(tmp_path, verdict):
    with pytest.raises(ValueError):
        _record(tmp_path, verdict=verdict)
    assert not (tmp_path / "01_em" / "metrics.json").exists()


@pytest.mark.parametrize("missing", ["name", "value", "ci_low", "ci_high"])
def test_incomplete_effect_rejected(tmp_path, missing):
    effect = {k: v for k, v in EFFECT.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        _record(tmp_path, effect=effect)


def test_every_declared_verdict_accepted(tmp_path):
    for v in R.VERDICTS:
        _record(tmp_path, verdict=v)
        assert R.read_result(tmp_path, "01_em")["verdict"] == v


def test_secrets_redacted(tmp_path):
    secret = "sk-" + "A1b2C3d4E5f6G7h8I9j0"
    params = {
        "api_key": "plain-looking-value",
        "OPENAI_API_KEY": "x",
        "nested": {"hf_token": "hf_abc", "judge_url": f"https://x/?k={secret}", "keep": "visible"},
        "list": [secret, "fine"],
        "lr": 1e-4,
        "max_new_tokens": 128,  # not a secret
    }
    path = _record(tmp_path, params=params)
    text = path.read_text()
    assert secret not in text and "plain-looking-value" not in text and "hf_abc" not in text
    got = R.read_result(tmp_path, "01_em")["params"]
    assert got["api_key"] == "<redacted>" and got["OPENAI_API_KEY"] == "<redacted>"
    assert got["nested"]["hf_token"] == "<redacted>" and got["nested"]["judge_url"] == "<redacted>"
    assert got["nested"]["keep"] == "visible"
    assert got["list"] == ["<redacted>", "fine"]
    assert got["lr"] == 1e-4 and got["max_new_tokens"] == 128
    assert params["api_key"] == "plain-looking-value"  # the caller's dict is not modified


def test_nan_and_numpy_values_become_json(tmp_path):
    metrics = {
        "nan": float("nan"),
        "inf": float("-inf"),
        "np_nan": np.float64("nan"),
        "np_int": np.int64(3),
        "np_float": np.float32(0.5),
        "list": [1.0, float("nan")],
        "array": np.array([0.25, np.nan]),
        "matrix": np.arange(4).reshape(2, 2),
        "scalar_array": np.array(2.5),
    }
    path = _record(tmp_path, metrics=metrics, effect={**EFFECT, "ci_high": float("nan")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    got = json.loads(text)  # strict JSON
    assert got["metrics"] == {
        "nan": None, "inf": None, "np_nan": None, "np_int": 3, "np_float": 0.5, "list": [1.0, None],
        "array": [0.25, None], "matrix": [[0, 1], [2, 3]], "scalar_array": 2.5,
    }
    assert got["effect"]["ci_high"] is None


def test_atomic_write_leaves_no_temp_files(tmp_path):
    _record(tmp_path)
    _record(tmp_path, notes="second write")
    assert sorted(p.name for p in (tmp_path / "01_em").iterdir()) == ["metrics.json"]
    assert R.read_result(tmp_path, "01_em")["notes"] == "second write"


def test_replication_is_recorded_and_checked(tmp_path):
    rep = {"seeds": [3, 4, 5], "verdict": "not reproduced at this scale", "effect": EFFECT}
    _record(tmp_path, verdict="partly reproduced", replication=rep)
    assert R.read_result(tmp_path, "01_em")["replication"] == rep
    _record(tmp_path)
    assert "replication" not in R.read_result(tmp_path, "01_em")  # a run without one records none
    for bad in ({"seeds": [3], "verdict": "maybe"}, {"seeds": [], "verdict": "reproduced"}):
        with pytest.raises(ValueError, match="replication"):
            _record(tmp_path, replication=bad)
