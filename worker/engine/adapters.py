"""Find a LoRA adapter: a local folder, or an s3://bucket/prefix downloaded once into a cache.

The trainer pushes adapter folders to S3 (`training.train --push`); workers on other machines serve
them by setting STORY_ADAPTER to that prefix. boto3 reads the standard AWS configuration
(credentials, region, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for MinIO or moto).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath

from worker.engine.hub import ModelLoadError

CONFIG_FILE = "adapter_config.json"
_download_lock = threading.Lock()
# An S3 endpoint that does not answer must fail the load in seconds, not after botocore's default
# 60 s timeouts times its retries (minutes).
S3_CONNECT_TIMEOUT = 5
S3_READ_TIMEOUT = 5
S3_MAX_ATTEMPTS = 2


class AdapterError(ValueError):
    """The adapter setting points at nothing usable; the message says what was found."""


class AdapterFetchError(AdapterError, ModelLoadError):
    """The adapter's S3 endpoint cannot be reached: a ModelLoadError (so a ConfigError) too."""


def resolve_adapter(spec: str, cache_dir: str | Path, setting: str = "STORY_ADAPTER") -> Path:
    """Return a local folder holding adapter_config.json (and the adapter weights). `setting` names
    where the location came from in errors (STORY_ADAPTER, or one style of STORY_STYLES)."""
    spec = str(spec).strip()
    if spec.startswith("s3://"):
        return _from_s3(spec, Path(cache_dir), setting)
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise AdapterError(f"{setting} {spec!r}: no such folder")
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{setting} {spec!r} is not a LoRA adapter folder: {CONFIG_FILE} is missing")
    return path.resolve()


def _from_s3(spec: str, cache_dir: Path, setting: str) -> Path:
    bucket, _, prefix = spec[len("s3://") :].partition("/")
    if not bucket:
        raise AdapterError(f"{setting} {spec!r}: no bucket name")
    prefix = prefix.strip("/")
    # One folder per adapter URL, so changing STORY_ADAPTER never serves a stale cached adapter.
    target = cache_dir / hashlib.sha256(f"s3://{bucket}/{prefix}".encode()).hexdigest()[:24]
    with _download_lock:
        if (target / CONFIG_FILE).is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Download next to the target, then rename: another process never sees a half folder.
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
        try:
            _download(bucket, prefix, tmp, spec, setting)
            try:
                tmp.rename(target)
            except OSError:  # another worker finished first: keep its complete copy
                if not (target / CONFIG_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download(bucket: str, prefix: str, dest: Path, spec: str, setting: str) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as EndpointError

    client = boto3.client(
        "s3",
        config=Config(
            connect_timeout=S3_CONNECT_TIMEOUT,
            read_timeout=S3_READ_TIMEOUT,
            retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        ),
    )
    transfer = TransferConfig(num_download_attempts=S3_MAX_ATTEMPTS)  # s3transfer retries read timeouts itself
    listing_prefix = f"{prefix}/" if prefix else ""  # "runs/a" must not pick up "runs/ab/..."
    count = 0
    root = dest.resolve()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listing_prefix):
            for item in page.get("Contents", []):
                relative = PurePosixPath(item["Key"][len(listing_prefix) :])
                if not relative.parts or relative.is_absolute() or ".." in relative.parts or item["Key"].endswith("/"):
                    continue  # folder markers, and keys like "prefix//etc/x" that would escape dest
                local = dest.joinpath(*relative.parts)
                if not local.resolve().is_relative_to(root):
                    continue
                local.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(local), Config=transfer)
                count += 1
    except (EndpointError, HTTPClientError) as exc:  # refused, timed out, DNS, TLS, connection dropped
        raise AdapterFetchError(
            f"{setting} {spec!r}: the S3 endpoint cannot be reached ({type(exc).__name__}: {exc}). "
            "Fixes: check the network and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; or point it at a "
            "local adapter folder (a copy of the S3 prefix); or unset it to serve the base model."
        ) from exc
    except (BotoCoreError, ClientError) as exc:
        raise AdapterError(f"{setting} {spec!r}: could not download from S3: {exc}") from exc
    if not (dest / CONFIG_FILE).is_file():
        found = f"{count} object(s)" if count else "nothing"
        raise AdapterError(f"{setting} {spec!r}: found {found} there but no {CONFIG_FILE}")
