"""Blob storage for uploads and MP3s: `s3://bucket/prefix` (any S3-compatible server) or a local folder.

Both the web process and the workers use it; keys are relative (their layout: shared/jobs/files.py).
Connection problems surface as StorageUnavailable so callers can retry or answer 503.
This module is the one callers import: open_storage() picks the backend, and the contract
(storage_base.py) and backends (storage_local.py, storage_s3.py) are re-exported from here.
"""

from __future__ import annotations

from shared.settings import Settings
from shared.storage_base import (  # noqa: F401
    Storage,
    StorageError,
    StorageNotFound,
    StorageUnavailable,
    check_key,
)
from shared.storage_local import LocalStorage
from shared.storage_s3 import S3Storage


def open_storage(url: str, public_endpoint_url: str | None = None, settings: Settings | None = None) -> Storage:
    """`s3://bucket/prefix`, `file:///abs/path`, `file://./relative` (or a bare path).

    public_endpoint_url (default: $PUBLIC_S3_ENDPOINT_URL) is where clients reach S3, for presigning;
    `settings` (default: get_settings()) give the S3 client its timeouts (S3_CONNECT_TIMEOUT, ...).
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"STORAGE_URL {url!r} names no bucket")
        return S3Storage(bucket, prefix.strip("/"), public_endpoint_url, settings)
    if url.startswith("file://"):
        url = url[len("file://") :]
        if url.startswith("localhost/"):
            url = url[len("localhost") :]
    elif "://" in url:
        raise StorageError(f"unsupported STORAGE_URL {url!r} (use s3://bucket/prefix or file:///path)")
    if not url:
        raise StorageError("STORAGE_URL names no folder")
    return LocalStorage(url)
