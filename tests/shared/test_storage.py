"""shared.storage against a real folder and moto's S3 server spoken to over HTTP."""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from shared.storage import LocalStorage, StorageError, StorageNotFound, StorageUnavailable, open_storage


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        store = open_storage(f"file://{tmp_path}/store")
    else:
        store = open_storage(request.getfixturevalue("s3_env"))
    store.ensure_ready()
    return store


def test_round_trip(storage):
    storage.put("inputs/abc", b"\x89PNG data", "image/png")
    assert storage.exists("inputs/abc")
    assert storage.get("inputs/abc") == b"\x89PNG data"
    storage.put("inputs/abc", b"new")  # overwriting is what an idempotent rerun does
    assert storage.get("inputs/abc") == b"new"
    storage.delete("inputs/abc")
    assert not storage.exists("inputs/abc")
    storage.delete("inputs/abc")  # deleting twice is fine


def test_missing_key(storage):
    with pytest.raises(StorageNotFound) as info:
        storage.get("audio/nothing.mp3")
    assert isinstance(info.value, KeyError)
    assert not storage.exists("audio/nothing.mp3")


def test_list_by_prefix(storage):
    for key in ("audio/b.mp3", "audio/a.mp3", "inputs/a"):
        storage.put(key, b"x")
    assert storage.list("audio/") == ["audio/a.mp3", "audio/b.mp3"]
    assert storage.list() == ["audio/a.mp3", "audio/b.mp3", "inputs/a"]
    assert storage.list("nothing/") == []


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../b", "a/./b", "dir/", "a\\b"])
def test_bad_keys_are_refused(storage, key):
    with pytest.raises(StorageError):
        storage.put(key, b"x")


def test_local_paths_and_no_presigned_url(tmp_path):
    store = open_storage(f"file://{tmp_path}/data")
    store.ensure_ready()
    store.put("audio/x.mp3", b"ID3")
    assert store.local_path("audio/x.mp3") == tmp_path / "data" / "audio" / "x.mp3"
    assert store.presigned_url("audio/x.mp3", 60) is None
    # Writes go through a temp file that is renamed: nothing else is left in the folder.
    assert os.listdir(tmp_path / "data" / "audio") == ["x.mp3"]


def test_local_symlink_escape_is_refused(tmp_path):
    store = open_storage(f"file://{tmp_path}/data")
    store.ensure_ready()
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path, tmp_path / "data" / "link")
    with pytest.raises(StorageError):
        store.get("link/secret")


def test_local_folder_under_a_file_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = open_storage(f"file://{blocker}/data")  # every mkdir/open fails with ENOTDIR
    with pytest.raises(StorageUnavailable):
        store.put("inputs/abc", b"x")
    with pytest.raises(StorageNotFound):
        store.get("inputs/abc")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
def test_local_environment_errors_are_unavailable(tmp_path, monkeypatch, code):
    store = open_storage(f"file://{tmp_path}/data")
    store.ensure_ready()
    store.put("inputs/old", b"x")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StorageUnavailable, match="cannot write inputs/abc"):
        store.put("inputs/abc", b"x")
    assert os.listdir(tmp_path / "data" / "inputs") == ["old"]  # no temp file left behind
    monkeypatch.setattr(Path, "read_bytes", fail)
    with pytest.raises(StorageUnavailable, match="cannot read inputs/old"):
        store.get("inputs/old")
    monkeypatch.setattr(Path, "unlink", fail)
    with pytest.raises(StorageUnavailable, match="cannot delete inputs/old"):
        store.delete("inputs/old")


@pytest.mark.parametrize("key", ["", "../outside", "a//b"])
def test_local_bad_keys_are_not_unavailable(tmp_path, key):
    store = open_storage(f"file://{tmp_path}/data")
    with pytest.raises(StorageError) as info:
        store.put(key, b"x")
    assert not isinstance(info.value, StorageUnavailable)


def test_storage_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = open_storage("file://./data")
    assert isinstance(rel, LocalStorage) and rel.root == tmp_path / "data"
    assert open_storage(f"file://{tmp_path}/abs").root == tmp_path / "abs"
    with pytest.raises(StorageError):
        open_storage("ftp://host/x")
    with pytest.raises(StorageError):
        open_storage("s3:///prefix")


def test_local_check(tmp_path):
    store = open_storage(f"file://{tmp_path}/later")
    with pytest.raises(StorageUnavailable):
        store.check()
    store.ensure_ready()
    store.check()


def test_s3_keys_live_under_the_prefix(s3_env, s3_endpoint):
    store = open_storage(s3_env)
    store.ensure_ready()
    store.put("audio/j.mp3", b"ID3", "audio/mpeg")
    bucket, prefix = s3_env[len("s3://") :].split("/", 1)
    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]] == [f"{prefix}/audio/j.mp3"]


def test_presigned_url_is_a_plain_get(s3_env):
    store = open_storage(s3_env)
    store.ensure_ready()
    store.put("audio/j.mp3", b"ID3 fake mp3", "audio/mpeg")
    url = store.presigned_url("audio/j.mp3", 60, filename="story.mp3")
    assert url.startswith("http")
    # S3 itself answers with these overrides; moto ignores them, so the URL is checked for them.
    assert "response-content-type=audio%2Fmpeg" in url and "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url, timeout=10) as response:  # no credentials, no SDK
        assert response.read() == b"ID3 fake mp3"
        assert response.headers["Content-Type"] == "audio/mpeg"
    assert store.local_path("audio/j.mp3") is None


def test_presigned_url_for_a_public_endpoint(s3_env, s3_endpoint, monkeypatch):
    public = s3_endpoint.replace("127.0.0.1", "localhost")  # the same server under another name
    open_storage(s3_env).ensure_ready()
    open_storage(s3_env).put("audio/p.mp3", b"ID3 public", "audio/mpeg")
    stores = [open_storage(s3_env, public_endpoint_url=public)]  # what the web app passes
    monkeypatch.setenv("PUBLIC_S3_ENDPOINT_URL", public)  # what compose sets
    stores.append(open_storage(s3_env))
    for store in stores:
        url = store.presigned_url("audio/p.mp3", 60)
        assert url.startswith(public + "/")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"ID3 public"


def test_ensure_ready_creates_the_bucket_once(s3_env):
    store = open_storage(s3_env)
    with pytest.raises(StorageUnavailable):
        store.check()  # the bucket does not exist yet
    store.ensure_ready()
    store.ensure_ready()  # a second process starting later finds it there
    store.check()


def test_bucket_in_another_region(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    store = open_storage(s3_env)
    store.ensure_ready()
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_unreachable_endpoint_is_unavailable_fast(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    store = open_storage(s3_env)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.check()
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.put("k", b"v")  # a few quick retries, then a transient error the caller can retry
    with pytest.raises(StorageUnavailable):
        store.ensure_ready()
    assert time.monotonic() - started < 15


def test_s3_timeouts_are_settings_read_from_their_environment_variables(monkeypatch, s3_env):
    from pydantic import ValidationError

    from shared.settings import Settings

    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "1.5")
    monkeypatch.setenv("S3_READ_TIMEOUT", "7")
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "4")
    settings = Settings()
    config = open_storage(s3_env, settings=settings)._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.5, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "0")
    with pytest.raises(ValidationError, match="s3_max_attempts"):
        Settings()


def test_a_batch_s_reads_beside_the_last_batch_s_uploads_keep_their_connections(s3_env, caplog):
    """A worker reads 8 photos while 8 results upload (worker/runner.py, STORAGE_THREADS each): with
    botocore's default pool of 10, urllib3 closed the extra connections after every call and warned."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from worker.runner import STORAGE_THREADS

    storage = open_storage(s3_env)
    storage.ensure_ready()
    storage.put("photo", b"x" * 1000)
    caplog.set_level(logging.WARNING, logger="urllib3")
    with ThreadPoolExecutor(2 * STORAGE_THREADS) as pool:
        for _ in range(3):
            list(pool.map(lambda i: storage.get("photo") if i % 2 else storage.put(f"out/{i}", b"y"), range(32)))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")] == []
