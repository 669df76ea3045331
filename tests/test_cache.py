"""Tests for emlib.core.cache: stable hashing, cache folders and atomic writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from emlib.core import cache as C


@dataclass
class _Cfg:
    a: int = 1
    b: str = "x"


def test_stable_hash_ignores_dict_key_order():
    d1 = {"a": 1, "b": [1, 2], "c": {"x": 1, "y": 2}}
    d2 = {"c": {"y": 2, "x": 1}, "b": [1, 2], "a": 1}
    assert list(d1) != list(d2)
    assert C.stable_hash(d1) == C.stable_hash(d2)


def test_stable_hash_differs_for_different_values():
    base = {"a": 1, "b": [1, 2], "c": "text"}
    variants = [{**base, "a": 2}, {**base, "b": [2, 1]}, {**base, "c": "text "}, {**base, "d": None}]
    hashes = {C.stable_hash(v) for v in variants} | {C.stable_hash(base)}
    assert len(hashes) == len(variants) + 1
    # the parts are positional
    assert C.stable_hash("a", "b") != C.stable_hash("b", "a")


def test_stable_hash_dataclass_equals_its_dict_and_paths_equal_strings():
    assert C.stable_hash(_Cfg()) == C.stable_hash({"b": "x", "a": 1})
    assert C.stable_hash(_Cfg(a=2)) != C.stable_hash(_Cfg())
    assert C.stable_hash(Path("/x/y")) == C.stable_hash("/x/y")


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "new"))
    assert C.cache_root() == tmp_path / "new"
    assert (tmp_path / "new").is_dir()
    d = C.cache_dir("kind", "key")
    assert d == tmp_path / "new" / "kind" / "key"
    assert not d.exists()


def test_file_fingerprint_is_sha256(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)  # spans several read chunks
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert C.file_fingerprint(p) == hashlib.sha256(data).hexdigest()


def test_atomic_write_json_round_trip_and_no_temp_files(tmp_path):
    obj = {"b": [1, 2.5, None], "a": "é"}
    path = C.atomic_write_json(tmp_path / "sub" / "x.json", obj)
    assert json.loads(path.read_text(encoding="utf-8")) == obj
    C.atomic_write_text(path, "replaced")
    assert path.read_text() == "replaced"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_atomic_write_text_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(C.os, "replace", boom)
    with pytest.raises(OSError):
        C.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_dir_success_replaces_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with C.atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("a")
        assert not (target / "a.txt").exists()  # invisible until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_leaves_nothing_on_exception(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with C.atomic_dir(target) as tmp:
            (tmp / "partial.bin").write_bytes(b"123")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_exception_keeps_previous_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "good.txt").write_text("good")
    with pytest.raises(KeyboardInterrupt):
        with C.atomic_dir(target) as tmp:
            (tmp / "partial.bin").write_bytes(b"123")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["good.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
