"""Submitting over real HTTP, as a client would."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

from tests.support.photos import photo


def post_job(base: str, index: int, filename: str = "p.jpg", timeout: float = 30) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="words"\r\n\r\n12\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo(index)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/api/v1/jobs",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def http(
    method: str, url: str, fields: dict | None = None, photo: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    """A real HTTP request; a multipart form of `fields` (and `photo` as `image`) when given."""
    data, headers = None, dict(headers or {})
    if fields is not None or photo is not None:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in (fields or {}).items()
        ]
        if photo is not None:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n".encode()
                + photo
                + b"\r\n"
            )
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
