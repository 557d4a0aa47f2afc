"""Conformance suite for ``ArtifactStore`` implementations.

Every store must pass this suite: the local one, and the S3 one against a real S3 server on loopback
(moto's server mode, started by ``tests/storage/conftest.py``). Add a new store to ``STORE_FACTORIES``.
"""

from __future__ import annotations

import os

import pytest

from storage import ArtifactNotFound, InvalidKey, LocalArtifactStore, keys


def _local(request, tmp_path):
    return LocalArtifactStore(tmp_path / "root")


def _s3(request, tmp_path):
    return request.getfixturevalue("s3_store")  # a fresh bucket on the loopback S3 server


STORE_FACTORIES = {"local": _local, "s3": _s3}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def any_store(request, tmp_path):
    return STORE_FACTORIES[request.param](request, tmp_path)


def test_put_get_roundtrip(any_store):
    assert any_store.put_bytes("users/1/a.bin", b"hello") == 5
    assert any_store.get_bytes("users/1/a.bin") == b"hello"
    assert any_store.exists("users/1/a.bin")
    assert any_store.size("users/1/a.bin") == 5
    with any_store.open("users/1/a.bin") as f:
        assert f.read() == b"hello"


def test_overwrite_replaces_whole_object(any_store):
    any_store.put_bytes("k/v", b"x" * 1000)
    any_store.put_bytes("k/v", b"short")
    assert any_store.get_bytes("k/v") == b"short"


def test_put_file_and_get_to_file(any_store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    assert any_store.put_file("users/2/concepts/1.safetensors", src) == src.stat().st_size
    out = any_store.get_to_file("users/2/concepts/1.safetensors", tmp_path / "out" / "copy.bin")
    assert out.read_bytes() == src.read_bytes()


def test_missing_key(any_store):
    assert not any_store.exists("nope/x")
    with pytest.raises(ArtifactNotFound):
        any_store.get_bytes("nope/x")
    with pytest.raises(ArtifactNotFound):
        any_store.open("nope/x")
    with pytest.raises(ArtifactNotFound):
        any_store.size("nope/x")
    assert any_store.delete("nope/x") is False


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/b/", "a\\b", "a\x00b", "a/\nb", ".hidden",
     "a/.tmp-x", "C:/x", "a/..", "..", "x" * 600],
)
def test_refused_keys(any_store, key):
    with pytest.raises(InvalidKey):
        any_store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        any_store.get_bytes(key)
    with pytest.raises(InvalidKey):
        any_store.exists(key)
    with pytest.raises(InvalidKey):
        any_store.delete(key)


def test_symlink_cannot_escape_root(tmp_path):
    store = LocalArtifactStore(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root" / "users").mkdir()
    os.symlink(outside, tmp_path / "root" / "users" / "evil")
    with pytest.raises(InvalidKey):
        store.put_bytes("users/evil/x", b"data")
    assert not (outside / "x").exists()


def test_failure_mid_write_leaves_nothing(any_store):
    def chunks():
        yield b"part one"
        raise OSError("disk on fire")

    if not hasattr(any_store, "write_stream"):
        pytest.skip("store has no streaming writer")
    with pytest.raises(OSError):
        any_store.write_stream("users/3/outputs/1/0.png", chunks())
    assert not any_store.exists("users/3/outputs/1/0.png")
    assert any_store.list("users/3/") == []
    # No temp file left anywhere in the backend either.
    if isinstance(any_store, LocalArtifactStore):
        leftovers = [p for p in any_store.root.rglob("*") if p.is_file()]
        assert leftovers == []


def test_failure_mid_write_keeps_old_version(any_store):
    any_store.put_bytes("users/3/concepts/1.safetensors", b"old")

    def chunks():
        yield b"new-partial"
        raise OSError("killed")

    with pytest.raises(OSError):
        any_store.write_stream("users/3/concepts/1.safetensors", chunks())
    assert any_store.get_bytes("users/3/concepts/1.safetensors") == b"old"


def test_failed_put_file_leaves_nothing(any_store, tmp_path):
    with pytest.raises(FileNotFoundError):
        any_store.put_file("users/4/x", tmp_path / "does-not-exist")
    assert not any_store.exists("users/4/x")


def test_list_and_delete_prefix(any_store):
    for uid in (10, 11, 100):
        any_store.put_bytes(keys.photo_key(uid, 1, 0), b"p")
        any_store.put_bytes(keys.concept_key(uid, 1), b"c")
        any_store.put_bytes(keys.output_key(uid, 5, 0), b"o")
    assert any_store.list(keys.user_prefix(10)) == sorted(
        [keys.photo_key(10, 1, 0), keys.concept_key(10, 1), keys.output_key(10, 5, 0)]
    )
    # "users/10/" must not match "users/100/".
    assert all(k.startswith("users/10/") for k in any_store.list("users/10/"))
    assert any_store.delete_prefix(keys.user_prefix(10)) == 3
    assert any_store.list("users/10/") == []
    assert len(any_store.list("users/100/")) == 3
    assert len(any_store.list("users/11/")) == 3
    assert len(any_store.list("")) == 6


def test_delete_prefix_needs_folder(any_store):
    any_store.put_bytes("users/1/x", b"1")
    with pytest.raises(InvalidKey):
        any_store.delete_prefix("users/1")
    with pytest.raises(InvalidKey):
        any_store.delete_prefix("../")


def test_delete(any_store):
    any_store.put_bytes("a/b/c", b"1")
    assert any_store.delete("a/b/c") is True
    assert not any_store.exists("a/b/c")
    assert any_store.list("a/") == []


def test_key_layout_is_per_owner():
    assert keys.concept_key(7, 3).startswith(keys.user_prefix(7))
    assert keys.photo_key(7, 3, 1).startswith(keys.user_prefix(7))
    assert keys.output_key(7, 9, 0).startswith(keys.user_prefix(7))
    assert keys.checkpoint_prefix(7, 3).startswith(keys.user_prefix(7))
    with pytest.raises(ValueError):
        keys.user_prefix("7/../8")  # type: ignore[arg-type]
