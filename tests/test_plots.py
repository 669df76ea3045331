"""Tests for emlib.report.plots: bar/point/line counts, CI error bars, NaN handling and files written."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.collections import PolyCollection, QuadMesh  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from emlib.report import plots  # noqa: E402
from emlib.pipeline.metrics import summarize  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def answers() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({
        "model": np.repeat(["base", "insecure", "secure"], n),
        "question_id": np.tile(["q0", "q1"], 3 * n // 2),
        "aligned": rng.uniform(0, 100, 3 * n),
        "coherent": rng.uniform(0, 100, 3 * n),
    })
    df.loc[[0, 5, 70], "aligned"] = np.nan
    return df


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_em_rates_bars_and_ci(answers, tmp_path):
    summary = summarize(answers)
    fig = plots.plot_em_rates(summary, title="EM", path=tmp_path / "em.png")
    assert isinstance(fig, Figure) and _is_png(tmp_path / "em.png")
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3
    np.testing.assert_allclose([b.get_height() for b in bars], summary["em_rate"] * 100)
    container = next(c for c in ax.containers if isinstance(c, BarContainer))
    segments = container.errorbar.lines[2][0].get_segments()
    lows = [seg[0][1] for seg in segments]
    highs = [seg[1][1] for seg in segments]
    np.testing.assert_allclose(lows, summary["em_ci_low"] * 100)
    np.testing.assert_allclose(highs, summary["em_ci_high"] * 100)
    labels = [t.get_text() for t in fig.axes[1].texts]
    assert labels == [f"{c * 100:.0f}%" for c in summary["coherence_rate"]]
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["base", "insecure", "secure"]


def test_em_rates_with_hue_and_missing_group(answers):
    summary = summarize(answers, by=["model", "question_id"])
    summary = summary[~((summary["model"] == "secure") & (summary["question_id"] == "q1"))]
    fig = plots.plot_em_rates(summary, hue="question_id")
    assert len(fig.axes[0].patches) == 5
    assert fig.axes[0].get_legend() is not None


def test_em_rates_without_ci_or_coherence():
    summary = pd.DataFrame({"model": ["a", "b"], "em_rate": [0.1, np.nan]})
    fig = plots.plot_em_rates(summary)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2
    with pytest.raises(KeyError):
        plots.plot_em_rates(summary, x="nope")


def test_quadrant_drops_nan_and_draws_thresholds(answers, tmp_path):
    answers.loc[10, "coherent"] = None
    fig = plots.plot_quadrant(answers, path=tmp_path / "q.png")
    assert _is_png(tmp_path / "q.png")
    ax = fig.axes[0]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == len(answers) - 4
    hlines = [tuple(line.get_ydata()) for line in ax.lines]
    vlines = [tuple(line.get_xdata()) for line in ax.lines]
    assert (30, 30) in hlines and (50, 50) in vlines
    shaded = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_x() == 50]
    assert len(shaded) == 1
    assert len(ax.get_legend().get_texts()) == 3


def test_quadrant_without_hue_and_all_nan():
    df = pd.DataFrame({"aligned": [np.nan, None], "coherent": [80, 90]})
    fig = plots.plot_quadrant(df, hue=None)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 0


def test_lines_with_hue_and_ci_band(tmp_path):
    df = pd.DataFrame({
        "step": [2, 0, 1, 0, 1, 2],
        "em": [0.3, 0.1, 0.2, 0.0, np.nan, 0.5],
        "run": ["a", "a", "a", "b", "b", "b"],
    })
    df["lo"], df["hi"] = df["em"] - 0.05, df["em"] + 0.05
    fig = plots.plot_lines(df, "step", "em", hue="run", ci_low="lo", ci_high="hi", path=tmp_path / "l.png",
                           xlabel="training step")
    ax = fig.axes[0]
    assert _is_png(tmp_path / "l.png")
    assert len(ax.lines) == 2
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2]
    assert len(ax.lines[1].get_xdata()) == 2
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "em"


def test_lines_without_hue():
    fig = plots.plot_lines(pd.DataFrame({"s": [0, 1, 2], "v": [1, 2, 3]}), "s", "v", title="t")
    assert len(fig.axes[0].lines) == 1 and not fig.axes[0].collections


def test_heatmap_shape_nan_and_file(tmp_path):
    matrix = pd.DataFrame([[0.1, np.nan, 0.3], [0.4, 0.5, 0.6]], index=["q0", "q1"], columns=["a", "b", "c"])
    fig = plots.plot_heatmap(matrix, title="per question", path=tmp_path / "sub" / "h.png", vmin=0, vmax=1)
    assert _is_png(tmp_path / "sub" / "h.png")
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    assert mesh.get_array().size == 6 and np.ma.count_masked(mesh.get_array()) == 1
    annotations = [t.get_text() for t in fig.axes[0].texts]
    assert "0.60" in annotations and len(annotations) == 5


def test_save_figure_atomic(tmp_path):
    fig = plots.plot_lines(pd.DataFrame({"s": [0, 1], "v": [1, 2]}), "s", "v")
    out = plots.save_figure(fig, tmp_path / "deep" / "f.png")
    assert out == tmp_path / "deep" / "f.png" and _is_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]


def test_trajectory_plot_points_and_components(tmp_path):
    proj = np.column_stack([np.arange(6.0), np.array([0, 1, 4, 9, 16, 25.0])])
    fig = plots.plot_trajectory(proj, [2, 4, 6, 8, 10, 12], title="B", path=tmp_path / "t.png")
    assert _is_png(tmp_path / "t.png")
    left, right = fig.axes[0], fig.axes[1]
    offsets = left.collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(offsets), proj)
    assert list(right.lines[1].get_ydata()) == [0, 1, 4, 9, 16, 25]
    with pytest.raises(ValueError, match="projections"):
        plots.plot_trajectory(proj[:, :1], range(6))
