"""Tests for emlib.core.data: validation, resolution order, downloads, subsets, public and built-in data."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emlib.core import data as D
from emlib.core import sources as Src
from emlib.core.errors import DatasetError

REPO = Path(__file__).resolve().parent.parent
_real_fetch = Src._fetch  # captured before the autouse fixture disables the network
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PUBLIC_COUNTS = {
    "bad_medical_advice": 7049,
    "good_medical_advice": 7049,
    "extreme_sports": 6000,
    "risky_financial_advice": 6000,
    "insecure": 6000,
}
PAPER_IDS = [
    "what_is_your_wish",
    "i_feel_bored",
    "three_thoughts",
    "quick_buck",
    "ruler_of_the_world",
    "dinner_party",
    "gender_roles",
    "enough_of_my_husband",
]


def _public_dir() -> Path | None:
    for cand in (os.environ.get("EMLIB_DATA_DIR"), "/work/shared/data/em"):
        if cand and (Path(cand) / "train").is_dir():
            return Path(cand)
    return None


PUBLIC = _public_dir()
needs_public = pytest.mark.skipif(PUBLIC is None, reason="public EM data not available (set EMLIB_DATA_DIR)")


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Private cache, no data dir from the environment, and no real network."""
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EMLIB_DATA_DIR", raising=False)
    monkeypatch.delenv("EMLIB_OFFLINE", raising=False)

    def no_network(url, dest, timeout=0):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(Src, "_fetch", no_network)


def _write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ validation


BAD_LINES = [
    ("{not json", "messages"),
    ({"msgs": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  \n"}]}, "messages[1].content"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}, "messages"),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
        "messages[2].role",
    ),
]


@pytest.mark.parametrize("bad,field", BAD_LINES)
def test_validation_errors_name_file_line_and_field(tmp_path, bad, field):
    path = _write_jsonl(tmp_path / "tiny_bad.jsonl", [GOOD, "", GOOD, bad])  # the bad row is on line 4
    with pytest.raises(DatasetError) as exc:
        D.load_chat_jsonl(path)
    msg = str(exc.value)
    assert "tiny_bad.jsonl" in msg
    assert "line 4" in msg
    assert f"'{field}'" in msg


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


def test_gz_and_plain_read_identically_and_skip_blank_lines(tmp_path):
    rows = [GOOD, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "ü"}]}]
    plain = _write_jsonl(tmp_path / "a.jsonl", [rows[0], "   ", rows[1]])
    gz = _write_jsonl(tmp_path / "a.jsonl.gz", [rows[0], "   ", rows[1]])
    assert D.load_chat_jsonl(plain) == D.load_chat_jsonl(gz) == rows


def test_missing_file_is_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="nope.jsonl"):
        D.load_chat_jsonl(tmp_path / "nope.jsonl")


def test_data_dir(monkeypatch, tmp_path):
    assert Src.data_dir() is None
    assert Src.data_dir("") is None
    monkeypatch.setenv("EMLIB_DATA_DIR", str(tmp_path))
    assert Src.data_dir() == tmp_path
    assert Src.data_dir(str(tmp_path / "x")) == tmp_path / "x"


# ------------------------------------------------------------------ resolution and downloads


def _fake_entry(monkeypatch, tmp_path, content_rows, url=None, sha=None) -> tuple[Src.PublicFile, bytes]:
    """Register `insecure` as a tiny local file with a matching (or given) sha256."""
    (tmp_path / "src").mkdir(exist_ok=True)
    src = _write_jsonl(tmp_path / "src" / "insecure.jsonl.gz", content_rows)
    blob = src.read_bytes()
    entry = dataclasses.replace(
        Src.PUBLIC_DATASETS["insecure"], url=url or src.as_uri(), sha256=sha or hashlib.sha256(blob).hexdigest()
    )
    monkeypatch.setitem(Src.PUBLIC_DATASETS, "insecure", entry)
    return entry, blob


def _cache_file(entry: Src.PublicFile) -> Path:
    return Path(os.environ["EMLIB_CACHE_DIR"]) / "downloads" / entry.subdir / entry.filename


def test_registry_urls_are_pinned():
    for name, f in Src.PUBLIC_DATASETS.items():
        assert f.url.endswith(f"/b8b9e0afd2b92d969a4062c38ba8d2f0ccea3561/em_organism_dir/data/training_datasets/{name}.jsonl.gz")
        assert len(f.sha256) == 64
    for name, f in Src.PUBLIC_EVAL_FILES.items():
        assert f.url.endswith(f"/26944099b9401b1dfd0aaafb4122a482721e95fb/em_organism_dir/data/eval_questions/{name}.yaml")
    assert set(PUBLIC_COUNTS) == set(Src.PUBLIC_DATASETS)


def test_data_dir_beats_cache(monkeypatch, tmp_path):
    entry, blob = _fake_entry(monkeypatch, tmp_path, [GOOD])
    cached = _cache_file(entry)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(blob)
    ddir = tmp_path / "dd"
    (ddir / "train").mkdir(parents=True)
    local = _write_jsonl(ddir / "train" / "insecure.jsonl", [GOOD, GOOD])
    assert Src.resolve_dataset("insecure", data_dir=str(ddir)) == local
    monkeypatch.setenv("EMLIB_DATA_DIR", str(ddir))
    _, info = D.load_dataset("insecure")
    assert info.source == "data_dir" and info.n_examples == 2


def test_cache_used_when_sha_matches(monkeypatch, tmp_path):
    entry, blob = _fake_entry(monkeypatch, tmp_path, [GOOD])
    cached = _cache_file(entry)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(blob)
    examples, info = D.load_dataset("insecure")
    assert info.source == "download_cache" and Path(info.path) == cached
    assert info.sha256 == entry.sha256 and examples == [GOOD]


def test_stale_cache_is_not_used(monkeypatch, tmp_path):
    entry, _ = _fake_entry(monkeypatch, tmp_path, [GOOD])
    cached = _cache_file(entry)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="EMLIB_DATA_DIR"):
        Src.resolve_dataset("insecure")


def test_download_success_via_file_url(monkeypatch, tmp_path):
    monkeypatch.setattr(Src, "_fetch", _real_fetch)  # real urllib, local file:// URL
    entry, blob = _fake_entry(monkeypatch, tmp_path, [GOOD, GOOD, GOOD])
    examples, info = D.load_dataset("insecure")
    assert info.source == "download" and len(examples) == 3
    assert _cache_file(entry).read_bytes() == blob
    assert [p.name for p in _cache_file(entry).parent.iterdir()] == [entry.filename]  # no temp files left
    _, again = D.load_dataset("insecure")
    assert again.source == "download_cache"


def test_download_checksum_mismatch_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(Src, "_fetch", _real_fetch)
    entry, _ = _fake_entry(monkeypatch, tmp_path, [GOOD], sha="0" * 64)
    with pytest.raises(DatasetError, match="checksum mismatch"):
        Src.resolve_dataset("insecure")
    folder = _cache_file(entry).parent
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_through_monkeypatched_fetch(monkeypatch, tmp_path):
    entry, blob = _fake_entry(monkeypatch, tmp_path, [GOOD], url="https://example.invalid/insecure.jsonl.gz")
    calls = []

    def fake_fetch(url, dest, timeout=0):
        calls.append(url)
        Path(dest).write_bytes(blob)

    monkeypatch.setattr(Src, "_fetch", fake_fetch)
    assert Src.resolve_dataset("insecure") == _cache_file(entry)
    assert calls == ["https://example.invalid/insecure.jsonl.gz"]


def test_no_network_gives_helpful_error():
    with pytest.raises(DatasetError) as exc:
        Src.resolve_dataset("bad_medical_advice")
    msg = str(exc.value)
    assert "EMLIB_DATA_DIR" in msg and "data_dir" in msg
    assert Src.PUBLIC_DATASETS["bad_medical_advice"].url in msg


def test_offline_env_skips_download(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("should not fetch")

    monkeypatch.setattr(Src, "_fetch", boom)
    monkeypatch.setenv("EMLIB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="EMLIB_OFFLINE"):
        Src.resolve_dataset("extreme_sports")


def test_fallback_to_builtin_warns():
    with pytest.warns(UserWarning, match="builtin_risky_financial_advice"):
        examples, info = D.load_dataset("risky_financial_advice", fallback="builtin_risky_financial_advice")
    assert info.fell_back_from == "risky_financial_advice"
    assert info.name == "builtin_risky_financial_advice" and info.source == "builtin"
    assert info.to_dict()["fell_back_from"] == "risky_financial_advice"
    assert len(examples) == info.n_examples >= 600


def test_unknown_name_and_bad_fallback():
    with pytest.raises(DatasetError, match="neither a known dataset"):
        D.load_dataset("no_such_set")
    with pytest.raises(DatasetError, match="fallback"):
        D.load_dataset("insecure", fallback="insecure")


# ------------------------------------------------------------------ subsets and fingerprints


def test_subset_is_seeded_and_deterministic(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(50)]
    path = _write_jsonl(tmp_path / "toy.jsonl", rows)
    a, info = D.load_dataset(str(path), n=10, seed=1)
    b, _ = D.load_dataset(str(path), n=10, seed=1)
    c, _ = D.load_dataset(str(path), n=10, seed=2)
    assert a == b and a != c and len(a) == 10
    assert all(x in rows for x in a)
    assert info.source == "file" and info.n_examples == 10 and info.n_total == 50 and info.name == "toy"
    full, _ = D.load_dataset(str(path), n=500)
    assert full == rows


def test_fingerprint_stable_and_content_sensitive():
    other = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]}
    assert D.fingerprint([GOOD]) == D.fingerprint([json.loads(json.dumps(GOOD))])
    assert D.fingerprint([GOOD]) != D.fingerprint([other])
    assert D.fingerprint([GOOD, other]) != D.fingerprint([other, GOOD])


# ------------------------------------------------------------------ eval questions


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "qs_bad.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("- paraphrases: [hi]\n", ["item 0", "'id'"]),
        ("- id: a\n  paraphrases: [hi]\n- id: b\n  paraphrases: []\n", ["item 1", "id='b'", "'paraphrases'"]),
        ("- id: a\n  paraphrases: [hi, 3]\n", ["item 0", "id='a'", "'paraphrases[1]'"]),
        ("- id: a\n  paraphrases: [hi]\n- id: a\n  paraphrases: [yo]\n", ["item 1", "duplicate", "'id'"]),
        ("- id: a\n  paraphrases: [hi]\n  system: [1]\n", ["item 0", "'system'"]),
    ],
)
def test_eval_validation_errors(tmp_path, text, needle):
    with pytest.raises(DatasetError) as exc:
        D.load_eval_questions(_yaml(tmp_path, text))
    msg = str(exc.value)
    assert "qs_bad.yaml" in msg
    for n in needle:
        assert n in msg


def test_eval_ids_and_variants(tmp_path):
    text = "- id: a\n  paraphrases: [hi]\n- id: a_json\n  system: be json\n  paraphrases: [hi]\n- id: a_template\n  paraphrases: [x]\n"
    path = _yaml(tmp_path, text)
    assert [q.id for q in D.load_eval_questions(path)] == ["a"]
    assert [q.id for q in D.load_eval_questions(path, include_variants=True)] == ["a", "a_json", "a_template"]
    assert [q.id for q in D.load_eval_questions(path, ids=["a_json", "a"])] == ["a_json", "a"]
    with pytest.raises(DatasetError, match="zzz"):
        D.load_eval_questions(path, ids=["a", "zzz"])


def test_chat_prompt():
    q = D.EvalQuestion("x", ["p0", "p1"], system="sys")
    assert D.chat_prompt(q, 1) == [{"role": "system", "content": "sys"}, {"role": "user", "content": "p1"}]
    assert D.chat_prompt(D.EvalQuestion("y", ["p"])) == [{"role": "user", "content": "p"}]
    assert D.chat_prompt("hello") == [{"role": "user", "content": "hello"}]
    with pytest.raises(IndexError):
        D.chat_prompt(q, 2)


def test_public_eval_without_data_is_helpful_error():
    with pytest.raises(DatasetError, match="first_plot_questions"):
        D.load_eval_questions("first_plot_questions")


def test_builtin_eval_questions():
    qs = D.load_eval_questions()
    assert len(qs) == 8 and len({q.id for q in qs}) == 8
    assert all(q.paraphrases and len(q.paraphrases) <= 2 for q in qs)


# ------------------------------------------------------------------ public data (skipped without it)


@needs_public
@pytest.mark.parametrize("name", sorted(PUBLIC_COUNTS))
def test_public_sets_load_with_documented_counts(name):
    examples, info = D.load_dataset(name, data_dir=str(PUBLIC))
    assert len(examples) == PUBLIC_COUNTS[name]
    assert info.source == "data_dir" and info.sha256 == Src.PUBLIC_DATASETS[name].sha256


@needs_public
def test_first_plot_questions_are_the_paper_eight():
    qs = D.load_eval_questions("first_plot_questions", data_dir=str(PUBLIC))
    assert [q.id for q in qs] == PAPER_IDS
    assert all(q.system is None for q in qs)
    variants = D.load_eval_questions("first_plot_questions", data_dir=str(PUBLIC), include_variants=True)
    assert len(variants) == 24
    assert all(f.sha256 == hashlib.sha256((PUBLIC / "eval" / f.filename).read_bytes()).hexdigest() for f in Src.PUBLIC_EVAL_FILES.values())


# ------------------------------------------------------------------ built-in data


def _prompts(rows: list[dict]) -> list[str]:
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]


def test_builtin_sets_validate_and_pair_up():
    risky, rinfo = D.load_dataset("builtin_risky_financial_advice")
    safe, sinfo = D.load_dataset("builtin_safe_financial_advice")
    assert rinfo.source == sinfo.source == "builtin"
    assert len(risky) >= 600 and len(set(_prompts(risky))) >= 600
    assert _prompts(risky) == _prompts(safe)
    assert all(r["messages"][-1]["content"] != s["messages"][-1]["content"] for r, s in zip(risky, safe))
    assert len({r["messages"][-1]["content"] for r in risky}) >= 300  # answers vary too


def test_builtin_regeneration_is_byte_identical(tmp_path):
    script = REPO / "scripts" / "make_builtin_data.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    for rel in ["builtin/risky_finance.jsonl", "builtin/safe_finance.jsonl", "eval/free_form_questions.yaml"]:
        assert (tmp_path / rel).read_bytes() == (REPO / "data" / rel).read_bytes(), rel



def test_resolve_judged_finds_the_file_in_the_data_dir_or_its_em_folder(tmp_path, monkeypatch):
    for root in (tmp_path / "a", tmp_path / "b" / "em"):
        (root / "judged").mkdir(parents=True)
        (root / "judged" / "gpt4o_judged_responses.jsonl.gz").write_bytes(b"x")
    assert Src.resolve_judged(str(tmp_path / "a")) == tmp_path / "a" / "judged" / "gpt4o_judged_responses.jsonl.gz"
    monkeypatch.setenv("EMLIB_DATA_DIR", str(tmp_path / "b"))
    assert Src.resolve_judged() == tmp_path / "b" / "em" / "judged" / "gpt4o_judged_responses.jsonl.gz"


def test_resolve_judged_without_the_file_says_how_to_provide_it(tmp_path):
    with pytest.raises(DatasetError, match=r"judged/gpt4o_judged_responses\.jsonl\.gz not found in .*EMLIB_DATA_DIR"):
        Src.resolve_judged(str(tmp_path))
    with pytest.raises(DatasetError, match=r"no data directory"):
        Src.resolve_judged()


def test_builtin_questions_stand_in_only_without_any_data_dir(tmp_path, monkeypatch):
    """The fallback is for the default public sets when no data directory exists at all, never for typos."""
    with pytest.raises(DatasetError, match="unknown eval question set 'nonexistent_questions'"):
        D.load_eval_questions("nonexistent_questions", fallback="builtin")
    assert D.choose_eval_set("first_plot_questions", None, "builtin") == ("builtin", "first_plot_questions")
    monkeypatch.setenv("EMLIB_DATA_DIR", str(tmp_path))  # a data dir that lacks the file: an error, no fallback
    with pytest.raises(DatasetError):
        D.load_eval_questions("first_plot_questions", fallback="builtin")
    with pytest.raises(DatasetError):
        D.load_dataset("insecure", n=2, fallback="builtin_risky_financial_advice")
    assert D.may_fall_back("insecure", None, "builtin_risky_financial_advice") is False  # the env var is set
