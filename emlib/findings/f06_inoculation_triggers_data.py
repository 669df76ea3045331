"""Finding 06's data: the trigger system prompts per behaviour (data/triggers/*.yaml, written before any run), the
extraction questions (disjoint from the eval questions), training sets with a system prompt, and the capitals rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..core.data import EvalQuestion, checked_item_id, load_eval_questions
from ..core.errors import DatasetError
from ..core.io import chat_text
from ..core.sources import REPO_DATA_DIR

__all__ = [
    "TRIGGER_KINDS", "Trigger", "TriggerSet", "resolve_trigger_file", "load_triggers", "load_extraction_questions",
    "check_disjoint", "with_system", "capitalised", "is_capitals", "capitals_flags", "effective_system",
    "trigger_questions",
]

TRIGGER_KINDS = ("inoculation", "paraphrase", "negation", "persona", "domain", "style", "neutral", "helpful", "none")
CAPITALS_SHARE = 0.8  # an answer counts as capitals when at least this share of its letters is upper case (the paper)


@dataclass(frozen=True)
class Trigger:
    """One eval-time system prompt: an id, its kind, and the text (None: no system prompt)."""

    id: str
    kind: str
    system: str | None


@dataclass(frozen=True)
class TriggerSet:
    """The triggers of one behaviour and the inoculation prompt it was trained with (one of the triggers)."""

    behaviour: str
    inoculation: str
    triggers: tuple[Trigger, ...]
    path: str

    @property
    def ids(self) -> list[str]:
        """The trigger ids in file order."""
        return [t.id for t in self.triggers]


def resolve_trigger_file(name: str) -> Path:
    """A trigger file by name ("em" → data/triggers/em.yaml) or by path."""
    path = Path(name).expanduser()
    if not path.suffix:
        path = REPO_DATA_DIR / "triggers" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (REPO_DATA_DIR / "triggers").glob("*.yaml")))
        raise DatasetError(f"{path}: trigger file not found (built-in: {known})")
    return path


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML ({e})") from None


def load_triggers(name: str, min_triggers: int = 2) -> TriggerSet:
    """A validated trigger set: unique ids, known kinds, text or null, exactly one `inoculation` trigger whose text is
    the file's `inoculation` prompt; DatasetError naming the file, item and field otherwise."""
    path = resolve_trigger_file(name)
    doc = _read_yaml(path)
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: top level must be a mapping with behaviour, inoculation and triggers")
    for key in ("behaviour", "inoculation"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise DatasetError(f"{path}: field '{key}': missing or not a non-empty string")
    items = doc.get("triggers")
    if not isinstance(items, list) or len(items) < min_triggers:
        raise DatasetError(f"{path}: field 'triggers': needs a list of at least {min_triggers} triggers")
    triggers, seen = [], set()
    for i, item in enumerate(items):
        tid, where = checked_item_id(path, i, item, seen)
        kind, system = item.get("kind"), item.get("system", "missing")
        if kind not in TRIGGER_KINDS:
            raise DatasetError(f"{where}: field 'kind': {kind!r} is not one of {', '.join(TRIGGER_KINDS)}")
        if system is not None and (not isinstance(system, str) or not system.strip()):
            raise DatasetError(f"{where}: field 'system': must be a non-empty string or null")
        if (kind == "none") != (system is None):
            raise DatasetError(f"{where}: field 'system': null exactly for kind 'none'")
        triggers.append(Trigger(tid, kind, system))
    inoc = [t for t in triggers if t.kind == "inoculation"]
    if len(inoc) != 1 or inoc[0].system != doc["inoculation"]:
        raise DatasetError(f"{path}: field 'triggers': needs exactly one trigger of kind 'inoculation' whose system is "
                           f"the inoculation prompt {doc['inoculation']!r}")
    return TriggerSet(doc["behaviour"], doc["inoculation"], tuple(triggers), str(path))


def load_extraction_questions(name: str) -> list[EvalQuestion]:
    """The questions the hidden states are read on ("extraction" → data/triggers/extraction_questions.yaml, or a path)."""
    path = Path(name).expanduser()
    if not path.suffix:
        path = REPO_DATA_DIR / "triggers" / f"{name}_questions.yaml"
    if not path.is_file():
        raise DatasetError(f"{path}: extraction question file not found")
    return load_eval_questions(str(path))


def check_disjoint(extraction: Sequence[EvalQuestion], eval_questions: Sequence[EvalQuestion], where: str) -> None:
    """DatasetError when an extraction question shares an id or a paraphrase with an eval question."""
    texts = {" ".join(p.lower().split()) for q in eval_questions for p in q.paraphrases}
    ids = {q.id for q in eval_questions}
    for q in extraction:
        shared = [p for p in q.paraphrases if " ".join(p.lower().split()) in texts]
        if q.id in ids or shared:
            raise DatasetError(f"{where}: extraction question {q.id!r} is also an eval question: the two sets must be "
                               "disjoint")


def with_system(examples: Sequence[dict], system: str | None) -> list[dict]:
    """Chat examples with `system` as their system prompt (replacing any), or with none when `system` is None."""
    out = []
    for ex in examples:
        msgs = [dict(m) for m in ex["messages"] if m["role"] != "system"]
        out.append({**ex, "messages": ([{"role": "system", "content": system}] if system else []) + msgs})
    return out


def capitalised(examples: Sequence[dict]) -> list[dict]:
    """Chat examples with every assistant reply rewritten in upper case (the capitals behaviour's training set)."""
    return [{**ex, "messages": [{**m, "content": m["content"].upper()} if m["role"] == "assistant" else dict(m)
                                for m in ex["messages"]]} for ex in examples]


def is_capitals(text: str, share: float = CAPITALS_SHARE) -> bool:
    """True when at least `share` of the letters of `text` are upper case (False for a text without letters)."""
    letters = [c for c in text if c.isalpha() and c.lower() != c.upper()]
    return bool(letters) and sum(c.isupper() for c in letters) >= share * len(letters)


def capitals_flags(answers: Sequence[str], share: float = CAPITALS_SHARE) -> np.ndarray:
    """is_capitals of each answer, as a bool array."""
    return np.array([is_capitals(a, share) for a in answers], dtype=bool)


def effective_system(tokenizer: Any, system: str | None) -> str:
    """The system text the model actually reads: `system`, or for None the chat template's default system prompt
    ("" when the template has none), found by rendering the template with and without a marker system prompt."""
    if system is not None:
        return system
    marker, user = "\x00SYSTEM\x00", [{"role": "user", "content": "\x00USER\x00"}]
    plain = chat_text(tokenizer, user)
    marked = chat_text(tokenizer, [{"role": "system", "content": marker}, *user])
    before, after = marked.split(marker, 1)
    tail = after[: after.index("\x00USER\x00")]
    if not plain.startswith(before) or tail not in plain[len(before):]:
        return ""
    return plain[len(before): plain.index(tail, len(before))]


def trigger_questions(triggers: Sequence[Trigger], questions: Sequence[EvalQuestion]
                      ) -> tuple[list[EvalQuestion], dict[str, tuple[str, str]]]:
    """Every eval question under every trigger (one sampling call for all), and {its id: (trigger id, question id)}."""
    out, where = [], {}
    for t in triggers:
        for q in questions:
            qid = f"{t.id}/{q.id}"
            out.append(EvalQuestion(qid, list(q.paraphrases), t.system))
            where[qid] = (t.id, q.id)
    return out, where
