"""Storage in an S3 bucket (AWS, MinIO, moto, ...); boto3 is imported only when one is opened."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from shared.settings import Settings, get_settings
from shared.storage_base import Storage, StorageError, StorageNotFound, StorageUnavailable, check_key

# Server-side conditions worth retrying later rather than reporting as a broken request.
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}

# Every call's timeouts and attempts are the settings' S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT and
# S3_MAX_ATTEMPTS (shared/settings.py says why they are short).
# Readiness probes (/readyz, the bucket check at start-up) answer faster still: one attempt.
PROBE_CONNECT_TIMEOUT = 2.0
PROBE_READ_TIMEOUT = 3.0
# After ensure_ready() found storage unreachable, it fails at once for this long instead of
# probing again: the web app's callers wait for it one at a time (a lock), and during an outage
# each would otherwise sit out its own probe timeout behind the others.
UNREACHABLE_HOLD = 2.0


def client_options(settings: Settings) -> dict:
    """botocore Config arguments of every S3 call of this process (the readiness probe aside)."""
    return {
        # A worker reads a batch's photos while the batch before uploads its results, 8 calls at a
        # time each (worker/runner.py, STORAGE_THREADS): botocore's default pool of 10 connections
        # made urllib3 close the extra ones after each call (and warn), so each opened a new one.
        "max_pool_connections": 32,
        "connect_timeout": settings.s3_connect_timeout,
        "read_timeout": settings.s3_read_timeout,
        "retries": {"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
    }


class S3Storage(Storage):
    """Objects under `prefix/` in one bucket, via boto3's standard configuration chain.

    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (MinIO, moto, ...), credentials and region come from the
    environment or ~/.aws as boto3 reads them; nothing is hard-coded here.
    """

    def __init__(
        self, bucket: str, prefix: str = "", public_endpoint_url: str | None = None, settings: Settings | None = None
    ):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self._unreachable: tuple[float | None, str] = (None, "")  # when ensure_ready last failed
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # Custom endpoints (a "minio" host in compose) rarely resolve bucket.host names: use paths.
        s3_opts = {"addressing_style": "path"} if custom else {}
        # SigV4 everywhere: newer regions and MinIO refuse the legacy presigned-URL signature.
        signing = {"signature_version": "s3v4"}
        session = boto3.session.Session()
        options = client_options(settings or get_settings())
        self._client = session.client("s3", config=Config(s3=s3_opts, **signing, **options))  # callers retry on top
        # Browsers may reach the server under another name than the services do (compose's
        # "minio:9000" vs localhost:9000): presigned URLs are signed for the public name.
        public = public_endpoint_url or os.environ.get("PUBLIC_S3_ENDPOINT_URL")
        self._signer = (
            session.client(
                "s3", endpoint_url=public, config=Config(s3={"addressing_style": "path"}, **signing, **options)
            )
            if public
            else self._client
        )
        # Readiness probes must answer quickly, so they get one attempt and shorter timeouts.
        self._probe = session.client(
            "s3",
            config=Config(
                connect_timeout=min(PROBE_CONNECT_TIMEOUT, options["connect_timeout"]),
                read_timeout=min(PROBE_READ_TIMEOUT, options["read_timeout"]),
                s3=s3_opts,
                retries={"mode": "standard", "total_max_attempts": 1},
                **signing,
            ),
        )

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
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ContentType=content_type or "application/octet-stream",
            )

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
        keys: list[str] = []
        with self._errors(f"list {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def presigned_url(self, key, expires, content_type="audio/mpeg", filename=None):
        params = {"Bucket": self.bucket, "Key": self._key(key), "ResponseContentType": content_type}
        if filename:
            params["ResponseContentDisposition"] = f'inline; filename="{filename}"'
        with self._errors(f"presign {key}"):
            return self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=int(expires))

    def ensure_ready(self):
        failed_at, failure = self._unreachable
        if failed_at is not None and time.monotonic() - failed_at < UNREACHABLE_HOLD:
            raise StorageUnavailable(f"{failure} (as of {time.monotonic() - failed_at:.1f} s ago)")
        try:
            with self._errors(f"bucket {self.bucket}"):
                self._probe.head_bucket(Bucket=self.bucket)  # fail fast: start-up retries later
            return
        except StorageNotFound:
            pass
        except StorageUnavailable as exc:
            self._unreachable = (time.monotonic(), str(exc))
            raise
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
