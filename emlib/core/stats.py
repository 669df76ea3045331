"""Bootstrap CIs, over answers or clustered (seeds > questions > answers), and small array helpers; numpy only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "Estimate",
    "as_float_array",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "hierarchical_bootstrap",
    "hierarchical_diff",
    "hierarchical_draws",
    "spearman_rows",
]


def as_float_array(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Scores as a float array with None mapped to NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of `stat` over resampled values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.array([stat(x[i]) for i in idx]) if stat is not np.mean else x[idx].mean(axis=1)
    lo, hi = np.nanquantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two independent samples, with its percentile bootstrap CI."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    da = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    db = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    lo, hi = np.quantile(da - db, [alpha / 2, 1 - alpha / 2])
    return float(xa.mean() - xb.mean()), float(lo), float(hi)


# ---------------------------------------------------------------- hierarchical (clustered) bootstrap

WEIGHTS = ("answers", "questions")
PAIRINGS = ("questions", "answers", "none")


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap CI, what it counted, and how the CI was computed.

    Pass it on to a finding's record as `Effect(name, e.value, e.ci_low, e.ci_high, e.ci_method)` and keep
    `n_seeds`, `n_questions`, `n_answers` beside it (`to_dict()` has all fields).
    """

    value: float
    ci_low: float
    ci_high: float
    n_seeds: int
    n_questions: int
    n_answers: int
    ci_method: str

    @property
    def ci(self) -> tuple[float, float]:
        """(ci_low, ci_high)."""
        return self.ci_low, self.ci_high

    def as_tuple(self) -> tuple[float, float, float]:
        """(value, ci_low, ci_high), the shape `bootstrap_diff_ci` returns."""
        return self.value, self.ci_low, self.ci_high

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of all fields (for metrics.json)."""
        return asdict(self)


def _codes(*labels: Any) -> list[np.ndarray]:
    """Integer codes 0..k-1 for label arrays, one code space shared by all of them (sorted labels)."""
    arrs = []
    for lab in labels:
        a = np.asarray(lab)
        arrs.append(a.astype(str) if a.dtype.kind == "O" else a)
    _, inv = np.unique(np.concatenate(arrs), return_inverse=True)
    out, start = [], 0
    for a in arrs:
        out.append(inv[start : start + a.size].reshape(-1))
        start += a.size
    return out


@dataclass(frozen=True)
class _Cells:
    """Answers sorted into (seed, question) cells: values x (n, k); each cell's seed, question code, size, offset."""

    x: np.ndarray
    seed: np.ndarray
    question: np.ndarray
    size: np.ndarray
    offset: np.ndarray


def _cells(x: np.ndarray, s: np.ndarray, q: np.ndarray) -> _Cells:
    """Group the rows of x (n, k) by (seed code, question code)."""
    order = np.lexsort((q, s))
    x, s, q = x[order], s[order], q[order]
    key = s * (int(q.max()) + 1) + q
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return _Cells(x, s[starts], q[starts], np.diff(np.r_[starts, len(x)]), starts)


def _multiplicities(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) counts of each of n units in a resample of n units with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def _statistic(total: np.ndarray, count: np.ndarray, m: np.ndarray, weight: str) -> np.ndarray:
    """(B, k) statistics from per-cell sums and counts of non-missing answers (B, J, k) and copies m (B, J)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if weight == "answers":
            return total.sum(axis=1) / count.sum(axis=1)
        # each copy of a (seed, question) cell counts once, whatever its number of answers
        has = count > 0
        mean = np.divide(total, count, out=np.zeros_like(total), where=has)
        return (m[..., None] * mean * has).sum(axis=1) / (m[..., None] * has).sum(axis=1)


def _point(cells: _Cells, weight: str) -> np.ndarray:
    """The statistic on the data themselves, per column."""
    valid = ~np.isnan(cells.x)
    total = np.add.reduceat(np.where(valid, cells.x, 0.0), cells.offset, axis=0)[None]
    count = np.add.reduceat(valid.astype(float), cells.offset, axis=0)[None]
    return _statistic(total, count, np.ones((1, len(cells.size))), weight)[0]


def _resampled(rng: np.random.Generator, cells: _Cells, k: np.ndarray, c: np.ndarray, weight: str) -> np.ndarray:
    """(B, k) bootstrap statistics: cell j is copied k[:, seed_j] * c[:, question_j] times in draw b, and each
    copy draws its cell's answers with replacement (index draws, summed with bincount). The columns of x
    (conditions paired by answer) share the answer draws. Done in chunks of draws to bound memory.
    """
    m = k[:, cells.seed] * c[:, cells.question]  # (B, J) copies of each cell
    n_boot, n_cells = m.shape
    valid = ~np.isnan(cells.x)
    values = [np.where(valid[:, i], cells.x[:, i], 0.0) for i in range(cells.x.shape[1])]
    oks = None if valid.all() else [valid[:, i].astype(float) for i in range(cells.x.shape[1])]
    chunk = max(1, 4_000_000 // max(1, len(cells.x)))
    out = []
    for b0 in range(0, n_boot, chunk):
        mc = m[b0 : b0 + chunk]
        reps = (mc * cells.size).ravel()  # answers drawn for each (draw, cell)
        slot = np.repeat(np.arange(mc.size), reps)
        size = np.repeat(np.broadcast_to(cells.size, mc.shape).ravel(), reps)
        idx = np.repeat(np.broadcast_to(cells.offset, mc.shape).ravel(), reps)
        idx += (rng.random(len(idx)) * size).astype(np.int64)  # uniform within the cell
        total = np.stack([np.bincount(slot, v[idx], mc.size).reshape(mc.shape) for v in values], axis=-1)
        if oks is None:  # nothing missing: counts are the numbers drawn
            count = np.broadcast_to(reps.reshape(mc.shape)[..., None], total.shape).astype(float)
        else:
            count = np.stack([np.bincount(slot, o[idx], mc.size).reshape(mc.shape) for o in oks], axis=-1)
        out.append(_statistic(total, count, mc, weight))
    return np.concatenate(out)


def _prepare(values, questions, seeds):
    """Float values as (n, columns), question and seed label arrays; rows missing in every column dropped."""
    x = np.asarray(values, dtype=float)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    q = np.asarray(questions)
    s = np.zeros(len(x), dtype=int) if seeds is None else np.asarray(seeds)
    if not len(x) == q.size == s.size:
        raise ValueError(f"{len(x)} values but {q.size} question labels and {s.size} seed labels")
    keep = ~np.isnan(x).all(axis=1)
    return x[keep], q.reshape(-1)[keep], s.reshape(-1)[keep]


def _method(seeds: bool, weight: str, pairing: str | None, n_boot: int, alpha: float) -> str:
    if seeds:
        parts = ["three-stage bootstrap over seeds, questions (the same draw for every seed), answers"]
    else:
        parts = ["two-stage bootstrap over questions, then answers within them"]
    if pairing == "questions":
        parts.append("paired by question" + (" and seed" if seeds else ""))
    elif pairing == "answers":
        parts.append("paired by answer")
    elif pairing == "none":
        parts.append("unpaired")
    if weight == "questions":
        parts.append("questions weighted equally")
    return "; ".join(parts) + f" ({n_boot} draws, percentile {100 * (1 - alpha):g}% CI)"


def _ci(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    if draws.size == 0 or np.isnan(draws).all():
        return float("nan"), float("nan")
    lo, hi = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check(weight: str, n_boot: int) -> None:
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def hierarchical_bootstrap(
    values: Sequence[float | None] | np.ndarray,
    questions: Sequence[Any] | np.ndarray,
    seeds: Sequence[Any] | np.ndarray | None = None,
    *,
    weight: str = "answers",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """A mean (e.g. an EM rate from 0/1 values) over answers grouped by question, with a clustered bootstrap CI.

    Each draw resamples the questions with replacement, then the answers within each drawn question. With
    `seeds` (the training seed of each answer) the seeds are resampled too, and seeds and questions are
    crossed: one draw of questions applies to every drawn seed (all seeds answer the same questions); answers
    are then resampled within each (seed, question) cell. NaN values (e.g. EM among coherent answers: NaN
    where incoherent) are left out. `weight="answers"` (default) is the mean over all answers;
    `weight="questions"` the mean of the per-(seed, question) means.
    """
    _check(weight, n_boot)
    x, q, s = _prepare(values, questions, seeds)
    method = _method(seeds is not None, weight, None, n_boot, alpha)
    if len(x) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0, 0, method)
    (qc,), (sc,) = _codes(q), _codes(s)
    n_q, n_s = int(qc.max()) + 1, int(sc.max()) + 1
    cells = _cells(x, sc, qc)
    rng = np.random.default_rng(seed)
    k = _multiplicities(rng, n_boot, n_s)
    c = _multiplicities(rng, n_boot, n_q)
    lo, hi = _ci(_resampled(rng, cells, k, c, weight)[:, 0], alpha)
    return Estimate(float(_point(cells, weight)[0]), lo, hi, n_s, n_q, len(x), method)


def hierarchical_diff(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    questions_a: Sequence[Any] | np.ndarray,
    questions_b: Sequence[Any] | np.ndarray | None = None,
    seeds_a: Sequence[Any] | np.ndarray | None = None,
    seeds_b: Sequence[Any] | np.ndarray | None = None,
    *,
    pairing: str = "questions",
    weight: str = "answers",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """mean(a) - mean(b) for two conditions answering the same questions, with a clustered bootstrap CI.

    `pairing`:
    - "questions" (default): every draw resamples the questions (and the seeds) once, for both conditions;
      answers are resampled within each (seed, question, condition) cell on their own. Use it when the
      conditions share questions (and training or sampling seeds) but their answers are separate samples.
    - "answers": a[i] and b[i] are the same (question, paraphrase, sample) under both conditions (same prompt,
      same sampling seed): questions (and seeds) are resampled, then the pairs within each question, so both
      conditions get the very same answer weights. Needs equal lengths and labels (questions_b and seeds_b
      default to questions_a and seeds_a). The difference of identical arrays is 0 in every draw.
    - "none": the conditions are resampled independently (questions and answers), as if unrelated.
    Seeds: a condition given no seed labels (e.g. the base model, which has no training seed) counts as one
    seed that every draw keeps; conditions given seed labels share them (seed 1 of a is seed 1 of b).
    NaN values are left out; `weight` as in `hierarchical_bootstrap`. `n_answers` counts both conditions.
    """
    _check(weight, n_boot)
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    method = _method(seeds_a is not None or seeds_b is not None, weight, pairing, n_boot, alpha)
    nan = float("nan")
    rng = np.random.default_rng(seed)
    if pairing == "answers":
        return _paired_answers(a, b, questions_a, questions_b, seeds_a, seeds_b, weight, n_boot, rng, alpha, method)
    xa, qa, sa = _prepare(a, questions_a, seeds_a)
    xb, qb, sb = _prepare(b, questions_a if questions_b is None else questions_b, seeds_b)
    if len(xa) == 0 or len(xb) == 0:
        return Estimate(nan, nan, nan, 0, 0, len(xa) + len(xb), method)
    seeded = (seeds_a is not None, seeds_b is not None)
    ones = np.ones((n_boot, 1), dtype=np.int64)  # a condition without seed labels: one seed, always kept
    if pairing == "questions":  # one draw of questions and seeds for both conditions
        qca, qcb = _codes(qa, qb)
        codes = iter(_codes(*[s for s, has in zip((sa, sb), seeded) if has]) if any(seeded) else [])
        sca, scb = (next(codes) if has else np.zeros(len(x), dtype=int) for has, x in zip(seeded, (xa, xb)))
        n_q, n_s = int(max(qca.max(), qcb.max())) + 1, int(max(sca.max(), scb.max())) + 1
        k, c = _multiplicities(rng, n_boot, n_s), _multiplicities(rng, n_boot, n_q)
        cells_a, cells_b = _cells(xa, sca, qca), _cells(xb, scb, qcb)
        da = _resampled(rng, cells_a, k if seeded[0] else ones, c, weight)[:, 0]
        db = _resampled(rng, cells_b, k if seeded[1] else ones, c, weight)[:, 0]
    else:  # "none": two independent clustered bootstraps, each over its own seeds and questions
        cells_ab, draws = [], []
        for x, q, s, has in ((xa, qa, sa, seeded[0]), (xb, qb, sb, seeded[1])):
            (qc,), (sc,) = _codes(q), _codes(s)
            cells_ab.append(_cells(x, sc, qc))
            k = _multiplicities(rng, n_boot, int(sc.max()) + 1) if has else ones
            c = _multiplicities(rng, n_boot, int(qc.max()) + 1)
            draws.append(_resampled(rng, cells_ab[-1], k, c, weight)[:, 0])
        (cells_a, cells_b), (da, db) = cells_ab, draws
        n_q = len(np.unique(np.concatenate([qa.astype(str), qb.astype(str)])))
        given = [s.astype(str) for s, has in zip((sa, sb), seeded) if has]
        n_s = len(np.unique(np.concatenate(given))) if given else 1
    lo, hi = _ci(da - db, alpha)
    value = float(_point(cells_a, weight)[0] - _point(cells_b, weight)[0])
    return Estimate(value, lo, hi, n_s, n_q, len(xa) + len(xb), method)


def _paired_answers(a, b, questions_a, questions_b, seeds_a, seeds_b, weight, n_boot, rng, alpha, method) -> Estimate:
    """hierarchical_diff with pairing="answers": the pairs (a[i], b[i]) are resampled together."""
    questions_b = questions_a if questions_b is None else questions_b
    seeds_a = seeds_b if seeds_a is None else seeds_a
    seeds_b = seeds_a if seeds_b is None else seeds_b
    if len(a) != len(b):
        raise ValueError(f"pairing='answers' needs equal lengths, got {len(a)} and {len(b)}")
    same_q = np.array_equal(np.asarray(questions_a).astype(str), np.asarray(questions_b).astype(str))
    same_s = seeds_a is None or np.array_equal(np.asarray(seeds_a).astype(str), np.asarray(seeds_b).astype(str))
    if not (same_q and same_s):
        raise ValueError("pairing='answers' needs the same question (and seed) label at each position of a and b")
    pairs = np.column_stack([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])
    x, q, s = _prepare(pairs, questions_a, seeds_a)
    if len(x) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0, 0, method)
    (qc,), (sc,) = _codes(q), _codes(s)
    n_q, n_s = int(qc.max()) + 1, int(sc.max()) + 1
    cells = _cells(x, sc, qc)
    k, c = _multiplicities(rng, n_boot, n_s), _multiplicities(rng, n_boot, n_q)
    draws = _resampled(rng, cells, k, c, weight)
    point = _point(cells, weight)
    lo, hi = _ci(draws[:, 0] - draws[:, 1], alpha)
    return Estimate(float(point[0] - point[1]), lo, hi, n_s, n_q, int((~np.isnan(x)).sum()), method)


def hierarchical_draws(
    values: Sequence[Sequence[float | None] | np.ndarray],
    questions: Sequence[Sequence[Any] | np.ndarray],
    seeds: Sequence[Sequence[Any] | np.ndarray | None] | None = None,
    *, weight: str = "answers", n_boot: int = 2000, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The means of several conditions answering the same questions (k,) and their bootstrap draws (n_boot, k), with
    `hierarchical_diff`'s pairing="questions" for all k at once: one draw of questions (and seeds: conditions given
    seed labels share them, one without counts as one seed always kept) for every condition, answers resampled within
    each condition's cells. Any contrast of the conditions (an interaction, a rank correlation) is then a function of
    the rows; with two conditions, draws[:, 0] − draws[:, 1] are hierarchical_diff's draws for the same `seed`."""
    _check(weight, n_boot)
    seeds = [None] * len(values) if seeds is None else list(seeds)
    if not len(values) == len(questions) == len(seeds) or not values:
        raise ValueError(f"{len(values)} conditions but {len(questions)} question and {len(seeds)} seed arrays")
    prepared = [_prepare(v, q, s) for v, q, s in zip(values, questions, seeds)]
    if any(len(x) == 0 for x, _, _ in prepared):
        raise ValueError("a condition has no answers")
    q_codes = _codes(*[q for _, q, _ in prepared])
    seeded = [s is not None for s in seeds]
    s_iter = iter(_codes(*[s for (_, _, s), has in zip(prepared, seeded) if has]) if any(seeded) else [])
    s_codes = [next(s_iter) if has else np.zeros(len(x), dtype=int) for (x, _, _), has in zip(prepared, seeded)]
    rng = np.random.default_rng(seed)
    n_s, n_q = max(int(s.max()) for s in s_codes) + 1, max(int(q.max()) for q in q_codes) + 1
    k, c, ones = _multiplicities(rng, n_boot, n_s), _multiplicities(rng, n_boot, n_q), np.ones((n_boot, 1), np.int64)
    cells = [_cells(x, sc, qc) for (x, _, _), sc, qc in zip(prepared, s_codes, q_codes)]
    draws = np.column_stack([_resampled(rng, cl, k if has else ones, c, weight)[:, 0] for cl, has in zip(cells, seeded)])
    return np.array([_point(cl, weight)[0] for cl in cells]), draws


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of x and y along the last axis, row by row (average ranks for ties; NaN where either is constant)."""
    from scipy.stats import rankdata

    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
