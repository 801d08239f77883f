"""Which weights a run evaluated: origin, hub commit, load format and a content hash computed once."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from runner.catalog.provenance import content_hash, describe


def model(**overrides):
    base = {"name": "m", "repo_id": "org/m", "revision": None, "path": None, "gguf": None, "load_format": "auto"}
    return OmegaConf.create(base | overrides)


def test_the_hash_covers_the_weights_and_is_reused_while_they_stay(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a" * 1000)
    (folder / "config.json").write_text("{}")  # not a weight file: not hashed
    store = tmp_path / "store"
    first = content_hash(folder, store)
    assert first and first.split(":")[0] in ("blake3", "sha256")
    assert len(list(store.iterdir())) == 1
    assert content_hash(folder, store) == first  # read back, not recomputed
    (folder / "config.json").write_text('{"changed": true}')
    assert content_hash(folder, store) == first
    (folder / "model.safetensors").write_bytes(b"b" * 1000)
    os.utime(folder / "model.safetensors", ns=(1, 1))  # another mtime: the stored value does not apply
    assert content_hash(folder, store) != first
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"b" * 1000)
    assert content_hash(copy, store) == content_hash(folder, store)  # the content decides, not the folder


def test_a_local_folder_is_named_by_its_path(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    weights = describe(model(path=str(tmp_path)), str(tmp_path), tmp_path / "cache")
    assert weights.origin == "local folder" and weights.model_args()["pretrained"] == str(tmp_path)
    assert weights.tags()["weights.hash"] == weights.content_hash


def test_a_hub_snapshot_is_named_by_its_commit(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--m"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"w")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    weights = describe(model(revision="main"), "org/m", tmp_path / "cache")
    assert (weights.origin, weights.revision, weights.source) == ("hub", commit, "org/m")
    assert weights.model_args() | {"weights_hash": "x"} == {
        "pretrained": "org/m", "revision": commit, "load_format": "auto", "weights_hash": "x"
    }  # fmt: skip


def test_random_weights_say_so(tmp_path):
    weights = describe(model(load_format="dummy"), str(tmp_path), tmp_path)
    assert weights.origin == "random (load_format=dummy)" and weights.content_hash is None
    assert weights.model_args() == {"pretrained": str(tmp_path), "load_format": "dummy"}
