"""The S3 store's own behaviour, against a real S3 server on loopback (moto's server mode, see conftest.py):
multipart uploads and their abort, pagination past 1000 keys, prefixes, ``open_store`` and the failure cases
(missing bucket, wrong credentials, an endpoint that never answers), each one line naming what to check.
The conformance suite (test_artifact_conformance.py) runs on this store too."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kitbooth.errors import TransientError
from kitbooth.settings import Settings
from storage import (
    ArtifactNotFound,
    LocalArtifactStore,
    S3ArtifactStore,
    StorageError,
    StoreUnavailable,
    keys,
    open_store,
)
from storage.s3 import PART_BYTES

SECRET = "kitbooth-test-secret"


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and len(text) < 300, text
    assert SECRET not in text
    return text


def _settings(tmp_path, **fields) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **fields)


# --- big objects: multipart and streaming ------------------------------------------------------------------
def test_big_file_goes_up_in_parts_and_streams_back(s3_server, s3_bucket, tmp_path):
    store = s3_server.store(s3_bucket, "big")
    src = tmp_path / "ckpt.bin"
    src.write_bytes(os.urandom(2 * PART_BYTES + 12345))
    assert store.put_file("users/1/checkpoints/2/state.bin", src) == src.stat().st_size
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="big/users/1/checkpoints/2/state.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: three parts
    with store.open("users/1/checkpoints/2/state.bin") as f:
        first = f.read(1000)
        rest = f.read()
    assert first + rest == src.read_bytes()
    out = store.get_to_file("users/1/checkpoints/2/state.bin", tmp_path / "copy.bin")
    assert out.read_bytes() == src.read_bytes()


def test_big_stream_that_fails_aborts_its_upload(s3_server, s3_bucket):
    store = s3_server.store(s3_bucket)
    store.put_bytes("users/3/concepts/1.safetensors", b"old")

    def chunks():
        yield os.urandom(PART_BYTES)
        yield os.urandom(PART_BYTES)
        raise OSError("worker killed")

    with pytest.raises(OSError, match="worker killed"):
        store.write_stream("users/3/concepts/1.safetensors", chunks())
    assert store.get_bytes("users/3/concepts/1.safetensors") == b"old"
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    # And a big stream that completes is one whole object.
    data = os.urandom(PART_BYTES + 5)
    assert store.write_stream("users/3/concepts/2.safetensors", [data[:100], data[100:]]) == len(data)
    assert store.get_bytes("users/3/concepts/2.safetensors") == data


@pytest.mark.slow
def test_list_and_delete_prefix_past_one_page(s3_server, s3_bucket):
    store = s3_server.store(s3_bucket, "p")
    many = [keys.output_key(42, job, 0) for job in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), many))
    store.put_bytes(keys.output_key(420, 1, 0), b"keep")
    assert store.list(keys.user_prefix(42)) == sorted(many)  # S3 pages hold at most 1000 keys
    assert store.delete_prefix(keys.user_prefix(42)) == 1100  # two DeleteObjects batches
    assert store.list(keys.user_prefix(42)) == []
    left = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in left["Contents"]] == [f"p/{keys.output_key(420, 1, 0)}"]


# --- prefixes and keys ----------------------------------------------------------------------------------
def test_keys_live_under_the_url_prefix(s3_server, s3_bucket):
    a = s3_server.store(s3_bucket, "tenant-a/kb")
    b = s3_server.store(s3_bucket, "tenant-b")
    a.put_bytes("users/1/x", b"a")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="tenant-a/kb/users/1/x")["Body"].read() == b"a"
    assert b.list("") == [] and not b.exists("users/1/x")
    assert s3_server.store(s3_bucket).list("") == ["tenant-a/kb/users/1/x"]


def test_list_matches_the_prefix_string_like_the_local_store(s3_server, s3_bucket, tmp_path):
    s3 = s3_server.store(s3_bucket)
    local = LocalArtifactStore(tmp_path / "root")
    for store in (s3, local):
        for key in ("users/1/a", "users/10/b", "users/2/c", "usersx/d"):
            store.put_bytes(key, b"1")
    for prefix in ("users/1", "users/1/", "users", "users/", "u", ""):
        assert s3.list(prefix) == local.list(prefix), prefix


def test_objects_with_names_no_key_may_have_are_not_listed(s3_server, s3_bucket):
    store = s3_server.store(s3_bucket)
    store.put_bytes("users/5/ok", b"1")
    s3_server.client().put_object(Bucket=s3_bucket, Key="users/5/.partial", Body=b"x")
    assert store.list("users/5/") == ["users/5/ok"]


async def test_callers_use_it_from_threads(s3_store):
    """Callers run the store via asyncio.to_thread; concurrent calls share one client."""
    await asyncio.gather(*(asyncio.to_thread(s3_store.put_bytes, f"users/7/outputs/{i}/0.png", bytes([i]) * 10)
                           for i in range(16)))
    got = await asyncio.gather(*(asyncio.to_thread(s3_store.get_bytes, f"users/7/outputs/{i}/0.png")
                                 for i in range(16)))
    assert got == [bytes([i]) * 10 for i in range(16)]


# --- open_store -------------------------------------------------------------------------------------------
def test_open_store_local_by_default_and_for_file_urls(tmp_path):
    store = open_store(_settings(tmp_path))
    assert isinstance(store, LocalArtifactStore) and store.root == (tmp_path / "data" / "artifacts").resolve()
    store = open_store(_settings(tmp_path, store_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(store, LocalArtifactStore) and store.root == (tmp_path / "elsewhere").resolve()


def test_open_store_s3_url(s3_server, s3_bucket, tmp_path):
    settings = _settings(tmp_path, store_url=f"s3://{s3_bucket}/kitbooth", s3_endpoint=s3_server.endpoint,
                         s3_access_key_id=s3_server.access_key_id, s3_secret_access_key=SECRET)
    store = open_store(settings)
    assert isinstance(store, S3ArtifactStore)
    store.put_bytes("users/1/x", b"1")
    assert s3_server.client().head_object(Bucket=s3_bucket, Key="kitbooth/users/1/x")["ContentLength"] == 1
    assert SECRET not in repr(store) and s3_bucket in repr(store)


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://AKIA:hunter2@bucket/x", "s3://No_Such/x", "s3://bucket/../x",
                                 "file://otherhost/x"])
def test_open_store_refuses_bad_urls_in_one_line(tmp_path, url):
    with pytest.raises(StorageError) as err:
        open_store(_settings(tmp_path, store_url=url), check=False)
    text = _one_line(err.value)
    assert "hunter2" not in text and "KITBOOTH_STORE_URL" in text


def test_bad_endpoint_is_one_line(tmp_path):
    with pytest.raises(StorageError, match="KITBOOTH_S3_ENDPOINT") as err:
        open_store(_settings(tmp_path, store_url="s3://bucket", s3_endpoint="minio:9000"), check=False)
    _one_line(err.value)


def test_r2_and_virtual_hosted_style_config():
    store = S3ArtifactStore("photos", endpoint="https://acct.r2.cloudflarestorage.com", region="auto",
                            path_style=False, access_key_id="k", secret_access_key=SECRET)
    config = store._store.config
    assert config["endpoint"] == "https://photos.acct.r2.cloudflarestorage.com"
    assert str(config["virtual_hosted_style_request"]).lower() == "true" and config["region"] == "auto"
    minio = S3ArtifactStore("photos", endpoint="http://127.0.0.1:9000/")
    assert minio._store.config["endpoint"] == "http://127.0.0.1:9000"
    assert str(minio._store.config["virtual_hosted_style_request"]).lower() == "false"


# --- failure cases: one line each, nothing half-written --------------------------------------------------
def test_missing_bucket(s3_server, tmp_path):
    settings = _settings(tmp_path, store_url="s3://no-such-bucket/kb", s3_endpoint=s3_server.endpoint,
                         s3_access_key_id="k", s3_secret_access_key=SECRET)
    with pytest.raises(StorageError) as err:
        open_store(settings)  # the start-up probe
    text = _one_line(err.value)
    assert "no-such-bucket" in text and s3_server.endpoint in text and "does not exist" in text
    assert not isinstance(err.value, TransientError)  # misconfiguration: retrying will not help
    store = open_store(settings, check=False)
    for call in (lambda: store.get_bytes("users/1/x"), lambda: store.put_bytes("users/1/x", b"1"),
                 lambda: store.list("users/"), lambda: store.delete_prefix("users/1/")):
        with pytest.raises(StorageError, match="no-such-bucket.*does not exist") as err:
            call()
        assert not isinstance(err.value, ArtifactNotFound | TransientError)


def test_wrong_credentials(s3_auth_server, tmp_path):
    bucket = s3_auth_server.new_bucket()
    good = s3_auth_server.store(bucket)
    good.put_bytes("users/1/x", b"1")  # the right key works
    cases = {"secret": dict(secret_access_key=SECRET), "key id": dict(access_key_id="AKIAWRONGWRONG")}
    for what, override in cases.items():
        bad = s3_auth_server.store(bucket, **override)
        with pytest.raises(StorageError) as err:
            bad.check()
        text = _one_line(err.value)
        assert s3_auth_server.secret_access_key not in text, what
        assert bucket in text and "KITBOOTH_S3_SECRET_ACCESS_KEY" in text and "KITBOOTH_S3_ACCESS_KEY_ID" in text
        assert not isinstance(err.value, TransientError)
        for call in (lambda b=bad: b.put_bytes("users/1/y", b"2"), lambda b=bad: b.get_bytes("users/1/x"),
                     lambda b=bad: b.exists("users/1/x"), lambda b=bad: b.delete("users/1/x")):
            with pytest.raises(StorageError, match="refused access key"):
                call()
    assert good.list("") == ["users/1/x"] and good.get_bytes("users/1/x") == b"1"  # nothing written or deleted


@pytest.fixture
def silent_endpoint():
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_endpoint_that_never_answers_times_out(silent_endpoint):
    store = S3ArtifactStore("kitbooth", endpoint=silent_endpoint, access_key_id="k", secret_access_key=SECRET,
                            timeout_s=0.5, connect_timeout_s=0.5, retries=0)
    for call in (store.check, lambda: store.get_bytes("users/1/x"), lambda: store.put_bytes("users/1/x", b"1")):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            call()
        assert time.monotonic() - started < 5
        text = _one_line(err.value)
        assert silent_endpoint in text and "did not answer within 0.5s" in text and "KITBOOTH_S3_ENDPOINT" in text
        assert isinstance(err.value, TransientError)  # the job runner retries it


def test_endpoint_that_refuses_connections():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3ArtifactStore("kitbooth", endpoint=f"http://127.0.0.1:{port}", access_key_id="k",
                            secret_access_key=SECRET, timeout_s=1, connect_timeout_s=0.5, retries=0)
    with pytest.raises(StoreUnavailable, match="refused the connection") as err:
        store.exists("users/1/x")
    _one_line(err.value)
