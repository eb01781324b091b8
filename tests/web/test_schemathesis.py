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

from tests.support.gunicorn import gunicorn
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


@pytest.fixture
def live(service_env, tmp_path):
    """The service as deployed: gunicorn with the committed config, so its own answers (414 for a
    request line over 4,094 bytes, 431 for headers too large) meet the document too."""
    with gunicorn(tmp_path, service_env) as server:
        yield f"http://127.0.0.1:{server.port}"


def test_schemathesis_finds_no_failures(live, celery_worker_process, service_env, tmp_path, capsys):
    base = live
    headers = {"Authorization": "Bearer " + create_api_key(service_env, "schemathesis")}
    job, spare = finished_job(base, headers), finished_job(base, headers)
    spec = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
    for item in spec["paths"].values():  # the examples phase then reaches a real job, its audio and photo
        for method, op in item.items():
            for param in op.get("parameters", []):
                if param["name"] == "job_id":  # the spare one is the one DELETE may erase
                    param["example"] = spare["id"] if method == "delete" else job["id"]
    # gunicorn's own answer to a request line over 4,094 bytes, documented like any other.
    long = requests.get(f"{base}/api/v1/jobs", params={"cursor": "x" * 5000}, headers=headers, timeout=10)
    assert long.status_code == 414 and "414" in spec["paths"]["/api/v1/jobs"]["get"]["responses"]
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
