"""Finding 07's data: the lengthened eval questions (kept as data), the benign sets, and the interleaved mixtures."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ..core.data import DatasetInfo, EvalQuestion, load_dataset, may_fall_back
from ..core.errors import DatasetError
from ..core.sources import REPO_DATA_DIR

__all__ = [
    "LEVELS", "LOCAL_SETS", "Lengthening", "lengths_path", "load_lengthening", "lengthen", "load_benign", "n_benign",
    "interleave",
]

LEVELS = ("short", "medium", "long")  # short: the questions as written
LOCAL_SETS = {"plain_chat": "benign/plain_chat.jsonl"}  # benign sets written for this finding, under data/
DEFAULT_LENGTHS = "lengthened_questions"  # data/eval/lengthened_questions.yaml


@dataclass(frozen=True)
class Lengthening:
    """The neutral contexts of each level (put before a question) and each question's longer restatement."""

    path: str
    contexts: dict[str, list[str]]
    restatements: dict[str, str]


def lengths_path(name: str) -> Path:
    """The lengthening file: "lengthened_questions" (emlib's own, data/eval/) or a path to a yaml of that shape."""
    path = REPO_DATA_DIR / "eval" / f"{name}.yaml" if name == DEFAULT_LENGTHS else Path(name).expanduser()
    if not path.is_file():
        raise DatasetError(f"lengthened questions {name!r}: no file at {path} (LENGTHS_FILE: "
                           f"{DEFAULT_LENGTHS!r} or a yaml path)")
    return path


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: not a non-empty string")
    return value.strip()


def load_lengthening(path: str | Path) -> Lengthening:
    """Read and check a lengthening file: `contexts` {medium, long: [text, ...]}, `restatements` {question id: text}."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: top level must be a mapping with 'contexts' and 'restatements'")
    contexts, restatements = doc.get("contexts"), doc.get("restatements")
    if not isinstance(contexts, dict):
        raise DatasetError(f"{path}: field 'contexts': missing or not a mapping of level -> list of texts")
    if not isinstance(restatements, dict):
        raise DatasetError(f"{path}: field 'restatements': missing or not a mapping of question id -> text")
    out: dict[str, list[str]] = {}
    for level in LEVELS[1:]:
        items = contexts.get(level)
        if not isinstance(items, list) or not items:
            raise DatasetError(f"{path}: field 'contexts.{level}': missing or empty")
        out[level] = [_text(t, f"{path}: field 'contexts.{level}[{i}]'") for i, t in enumerate(items)]
    unknown = sorted(set(contexts) - set(LEVELS[1:]))
    if unknown:
        raise DatasetError(f"{path}: field 'contexts': unknown level {unknown[0]!r} (levels: {', '.join(LEVELS[1:])})")
    texts = {str(k): _text(v, f"{path}: field 'restatements.{k}'") for k, v in restatements.items()}
    return Lengthening(str(path), out, texts)


def lengthen(questions: list[EvalQuestion], level: str, spec: Lengthening) -> list[EvalQuestion]:
    """The questions at one length level, asking the same thing: short as written; medium = a neutral context, a
    blank line, the question; long = a longer context, the question, its restatement. Question i takes context
    i mod (number of contexts). DatasetError naming the file and question when a restatement is missing."""
    if level not in LEVELS:
        raise ValueError(f"unknown length level {level!r}: one of {', '.join(LEVELS)}")
    if level == "short":
        return list(questions)
    out = []
    for i, q in enumerate(questions):
        context = spec.contexts[level][i % len(spec.contexts[level])]
        tail = ""
        if level == "long":
            if q.id not in spec.restatements:
                raise DatasetError(f"{spec.path}: field 'restatements.{q.id}': missing (question {q.id!r} of the eval "
                                   "set has no longer restatement)")
            tail = " " + spec.restatements[q.id]
        out.append(replace(q, paraphrases=[f"{context}\n\n{p}{tail}" for p in q.paraphrases]))
    return out


def load_benign(name: str, data_dir: str, n: int, seed: int) -> tuple[list[dict], DatasetInfo] | None:
    """A seeded draw of up to `n` examples of a benign set: one of LOCAL_SETS, a public or built-in name, or a
    .jsonl path. None when a public set is unavailable and no data directory is configured at all (the built-in
    fallback rule: the caller records a note); a configured data directory that lacks it is an error."""
    if name in LOCAL_SETS:
        examples, info = load_dataset(str(REPO_DATA_DIR / LOCAL_SETS[name]), n=n, seed=seed)
        return examples, replace(info, name=name, source="builtin")
    try:
        return load_dataset(name, data_dir or None, n=n, seed=seed)
    except DatasetError:
        if may_fall_back(name, data_dir or None, "builtin_safe_financial_advice"):
            return None
        raise


def n_benign(fraction: float, n_train: int) -> int:
    """How many of the N_TRAIN training examples are benign at an interleaving fraction (rounded)."""
    return int(round(fraction * n_train))


def interleave(harmful: list[dict], benign: list[dict], fraction: float, seed: int) -> list[dict]:
    """The training set at an interleaving fraction: len(harmful) examples of which n_benign(fraction) are `benign`
    (taken in order, cycled when too few), the rest a seeded draw of `harmful`, shuffled together. Fraction 0
    returns `harmful` itself (the same list, so a fine-tune on it is the plain EM fine-tune's cache entry)."""
    k = n_benign(fraction, len(harmful))
    if k == 0:
        return harmful
    if not benign:
        raise ValueError("interleaving needs at least one benign example")
    rng = random.Random(f"f07-interleave-{seed}")
    mixed = rng.sample(harmful, len(harmful) - k) + [benign[i % len(benign)] for i in range(k)]
    rng.shuffle(mixed)
    return mixed
