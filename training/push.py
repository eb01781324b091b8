"""Upload a trained adapter folder to storage (s3://bucket/prefix), where STORY_ADAPTER can point.

The files go directly under the prefix (prefix/adapter_config.json, ...), which is the layout the
worker's adapter resolver downloads. Uses the service's own storage code and AWS settings.
"""

from __future__ import annotations

from pathlib import Path

CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown", ".safetensors": "application/octet-stream"}


def push_adapter(folder: str | Path, url: str) -> list[str]:
    """Put every file of `folder` (recursively) under `url`; return the keys written."""
    from shared.storage import open_storage

    folder = Path(folder)
    storage = open_storage(url)
    storage.ensure_ready()  # creates the bucket on a fresh S3-compatible server
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    # The config goes last: a reader that finds it can trust the weights are already there.
    files.sort(key=lambda p: p.name == "adapter_config.json")
    keys = []
    for path in files:
        key = path.relative_to(folder).as_posix()
        storage.put(key, path.read_bytes(), content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        keys.append(key)
    return keys
