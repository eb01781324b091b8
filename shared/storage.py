"""Blob storage for uploads and MP3s: `s3://bucket/prefix` (any S3-compatible server) or a local folder.

Both the web process and the workers use it; keys are relative ("inputs/<id>", "audio/<id>.mp3").
Connection problems surface as StorageUnavailable so callers can retry or answer 503.
"""
from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Optional


class StorageError(Exception):
    """A storage operation failed for a reason retrying will not fix (bad key, denied, ...)."""


class StorageUnavailable(StorageError):
    """The storage could not be reached (transient: connection refused, timeout, 5xx)."""


class StorageNotFound(StorageError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


def check_key(key: str) -> str:
    """Refuse keys that are empty, absolute or climb out of the root with '..'."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid storage key {key!r}")
    if any(part in ("..", ".", "") for part in key.split("/")):  # also catches "a//b" and "dir/"
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    url: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: Optional[str] = None) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    def presigned_url(self, key: str, expires: int, content_type: str = "audio/mpeg",
                      filename: Optional[str] = None) -> Optional[str]:
        """A URL anyone can GET for `expires` seconds; None where the backend has none (local)."""
        return None

    def local_path(self, key: str) -> Optional[Path]:
        return None

    @abstractmethod
    def ensure_ready(self) -> None: ...

    @abstractmethod
    def check(self) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


class LocalStorage(Storage):
    """Files under one folder; writes go to a temp file first so readers never see half an MP3."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.abspath(root))
        self.url = "file://" + str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # A symlink inside the root could still point outside it; resolve() exposes that.
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"storage key {key!r} escapes the storage root")
        return path

    def put(self, key, data, content_type=None):
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc

    def get(self, key):
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def exists(self, key):
        return self._path(key).is_file()

    def delete(self, key):
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc

    def list(self, prefix=""):
        if not self.root.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):  # an unfinished write
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def local_path(self, key):
        return self._path(key)

    def ensure_ready(self):
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create {self.root}: {exc}") from exc

    def check(self):
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"{self.root} is missing or not writable")


# Server-side conditions worth retrying later rather than reporting as a broken request.
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}


class S3Storage(Storage):
    """Objects under `prefix/` in one bucket, via boto3's standard configuration chain.

    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (MinIO, moto, ...), credentials and region come from the
    environment or ~/.aws as boto3 reads them; nothing is hard-coded here.
    """

    def __init__(self, bucket: str, prefix: str = "", public_endpoint_url: Optional[str] = None):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # Custom endpoints (a "minio" host in compose) rarely resolve bucket.host names: use paths.
        s3_opts = {"addressing_style": "path"} if custom else {}
        # SigV4 everywhere: newer regions and MinIO refuse the legacy presigned-URL signature.
        signing = {"signature_version": "s3v4"}
        session = boto3.session.Session()
        self._client = session.client("s3", config=Config(
            connect_timeout=5, read_timeout=30, s3=s3_opts, **signing,
            retries={"mode": "standard", "max_attempts": 3}))  # callers retry on top
        # Browsers may reach the server under another name than the services do (compose's
        # "minio:9000" vs localhost:9000): presigned URLs are signed for the public name.
        public = public_endpoint_url or os.environ.get("PUBLIC_S3_ENDPOINT_URL")
        self._signer = session.client("s3", endpoint_url=public, config=Config(
            s3={"addressing_style": "path"}, **signing)) if public else self._client
        # Readiness probes must answer quickly, so they get one attempt and short timeouts.
        self._probe = session.client("s3", config=Config(
            connect_timeout=2, read_timeout=5, s3=s3_opts, retries={"total_max_attempts": 1}, **signing))

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, what: str):
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StorageNotFound(what) from None
            if status >= 500 or code in _TRANSIENT_CODES:
                raise StorageUnavailable(f"{what}: {code or status}") from exc
            raise StorageError(f"{what}: {code} {err.get('Message', '')}".strip()) from exc
        except (ConnectionError, HTTPClientError) as exc:
            raise StorageUnavailable(f"{what}: {exc}") from exc
        except BotoCoreError as exc:  # missing credentials, bad configuration
            raise StorageError(f"{what}: {exc}") from exc

    def put(self, key, data, content_type=None):
        with self._errors(f"put {key}"):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                    ContentType=content_type or "application/octet-stream")

    def get(self, key):
        with self._errors(key):
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key):
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except StorageNotFound:
            return False

    def delete(self, key):
        with self._errors(f"delete {key}"):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix=""):
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._errors(f"list {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                keys.extend(obj["Key"][len(base):] for obj in page.get("Contents", []))
        return sorted(keys)

    def presigned_url(self, key, expires, content_type="audio/mpeg", filename=None):
        params = {"Bucket": self.bucket, "Key": self._key(key), "ResponseContentType": content_type}
        if filename:
            params["ResponseContentDisposition"] = f'inline; filename="{filename}"'
        with self._errors(f"presign {key}"):
            return self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=int(expires))

    def ensure_ready(self):
        try:
            with self._errors(f"bucket {self.bucket}"):
                self._probe.head_bucket(Bucket=self.bucket)  # fail fast: start-up retries later
            return
        except StorageNotFound:
            pass
        region = self._client.meta.region_name
        kwargs = {}
        if region and region not in ("us-east-1", "aws-global"):
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            with self._errors(f"create bucket {self.bucket}"):
                self._client.create_bucket(Bucket=self.bucket, **kwargs)
        except StorageError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):  # another process won the race
                raise

    def check(self):
        try:
            with self._errors(f"bucket {self.bucket}"):
                self._probe.head_bucket(Bucket=self.bucket)
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise StorageUnavailable(f"s3://{self.bucket} is not usable: {exc}") from exc


def open_storage(url: str, public_endpoint_url: Optional[str] = None) -> Storage:
    """`s3://bucket/prefix`, `file:///abs/path`, `file://./relative` (or a bare path).

    public_endpoint_url (default: $PUBLIC_S3_ENDPOINT_URL) is where clients reach S3, for presigning.
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"STORAGE_URL {url!r} names no bucket")
        return S3Storage(bucket, prefix.strip("/"), public_endpoint_url)
    if url.startswith("file://"):
        url = url[len("file://"):]
        if url.startswith("localhost/"):
            url = url[len("localhost"):]
    elif "://" in url:
        raise StorageError(f"unsupported STORAGE_URL {url!r} (use s3://bucket/prefix or file:///path)")
    if not url:
        raise StorageError("STORAGE_URL names no folder")
    return LocalStorage(url)
