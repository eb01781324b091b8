"""Prometheus metrics over HTTP: a scrape, a sample's value, a submission to count."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from tests.support.photos import photo


def scrape(base: str, headers: dict | None = None) -> tuple[str, dict]:
    """(body, headers) of GET /metrics."""
    request = urllib.request.Request(f"{base}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode(), dict(response.headers)


def value(text: str, name: str, **labels) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def has(text: str, name: str) -> bool:
    return any(s.name == name for f in text_string_to_metric_families(text) for s in f.samples)


def post(base: str, path: str, fields: dict, headers: dict | None = None) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + photo("teal", (64, 48), "PNG")
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{base}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
