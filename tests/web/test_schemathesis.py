"""Schemathesis against the live service (real HTTP server, Redis, storage and Celery worker): every
operation of /api/v1/openapi.json, with valid and invalid generated inputs (headers, query, path,
multipart bodies, wrong methods, missing auth, and chains of calls along the links it infers), and
the responses checked against the document: no 5xx, only documented statuses, content types,
headers and bodies. Zero failures, and the run's size is printed.

Two of Schemathesis' checks are left out on purpose: positive_data_acceptance (a schema-valid
photo of random bytes, or a cursor this API never made, is rightly refused) and
negative_data_rejection (a blank `words`, `seed`, `limit` or `webhook` counts as absent, as the
web form sends blank fields).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from tests.support.keys import create_api_key
from tests.support.photos import photo

pytestmark = pytest.mark.parametrize("storage_url", ["local"], indirect=True)  # one backend keeps it short

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,missing_required_header,unsupported_method,allow_header_conformance,"
    "ignored_auth,use_after_free,ensure_resource_availability"
)


def finished_job(base: str, headers: dict) -> dict:
    """A job that went all the way through the worker, so the job operations have a real one to return."""
    image = photo("teal", (32, 24), "PNG")
    response = requests.post(
        f"{base}/api/v1/jobs",
        files={"image": ("p.png", image, "image/png")},
        data={"words": "10", "seed": "1"},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while (job := requests.get(f"{base}/api/v1/jobs/{response.json()['id']}", headers=headers, timeout=10).json())[
        "status"
    ] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    return job


def test_schemathesis_finds_no_failures(web_server, celery_worker_process, service_env, tmp_path, capsys):
    _, base = web_server
    headers = {"Authorization": "Bearer " + create_api_key(service_env, "schemathesis")}
    job = finished_job(base, headers)
    spec = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
    for item in spec["paths"].values():  # the examples phase then reaches a real job, its audio and photo
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"] == "job_id":
                    param["example"] = job["id"]
    (tmp_path / "openapi.json").write_text(json.dumps(spec))

    command = [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "run",
        "openapi.json",
        "--url",
        base,
        "--header",
        f"Authorization:{headers['Authorization']}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "20",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "json,har",
        "--report-json-path",
        "run.json",
        "--report-har-path",
        "run.har",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert (tmp_path / "run.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "run.json").read_text())
    entries = json.loads((tmp_path / "run.har").read_text())["log"]["entries"]
    seed = report["seed"]
    with capsys.disabled():
        print(
            f"\nSchemathesis {report['schemathesis_version']} (seed {seed}): {report['operations']['tested']} "
            f"operations, {report['test_cases']['generated']} test cases, {len(entries)} requests, "
            f"{report['test_cases']['with_failures']} failing, {len(report['errors'])} errors, "
            f"{report['running_time']:.1f} s"
        )
    assert result.returncode == 0 and not report["failures"] and not report["errors"], (
        f"reproduce with --seed {seed}\n" + result.stdout[-6000:] + result.stderr[-2000:]
    )

    operations = sum(len(item) for item in spec["paths"].values())
    assert report["operations"]["tested"] == operations >= 13  # every operation the spec has (13 when written)
    assert len(entries) > 300
    seen = {
        (e["request"]["method"], e["request"]["url"].split("?")[0].removeprefix(base), e["response"]["status"])
        for e in entries
    }
    # It reached the core of the service, not only its 4xx paths:
    assert ("POST", "/api/v1/jobs", 202) in seen  # a photo it generated became a job
    assert ("GET", f"/api/v1/jobs/{job['id']}/audio", 200) in seen  # the MP3 of a finished one
    assert ("GET", f"/api/v1/jobs/{job['id']}/image", 200) in seen
    assert ("GET", f"/api/v1/jobs/{job['id']}/subtitles.vtt", 200) in seen
    assert ("POST", f"/api/v1/jobs/{job['id']}/cancel", 409) in seen
