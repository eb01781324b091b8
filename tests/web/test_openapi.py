"""The OpenAPI document cannot drift from the code: every public route is in it and every operation in
it is a route (with the view as operationId), every error code the code raises is documented under
its status, the error table in docs/api.md says the same, and the document is valid OpenAPI 3.1. The docs
page renders all of it. (tests/web/test_schemathesis.py checks the live service against it.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from shared.jobs.public import PUBLIC_FIELDS
from shared.settings import Settings
from tests.support.env import TEST_SECRET_KEY
from web.api.contract import ListQuery, SubmitFields, WaitQuery
from web.api.docs import CODES
from web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
# The HTTPException handler (web/middleware/errors.py) names werkzeug's errors; these are the ones the API can meet.
WERKZEUG_CODES = {
    (400, "bad_request"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (413, "too_large"),
    (416, "requested_range_not_satisfiable"),
}
NOT_API = {
    (403, "cross_site_request"),  # the HTML form's posts only (web/pages/jobs.py)
    (500, "internal_error"),
}  # the last resort: a bug, never part of the contract
PATH_ONLY = {"not_found", "unreadable"}  # shared.images errors for files on disk, never for an upload


@pytest.fixture
def app(redis_url, tmp_path):
    app = create_app(Settings(redis_url=redis_url, storage_url=f"file://{tmp_path}/data", secret_key=TEST_SECRET_KEY))
    yield app
    app.extensions["narrator"].celery.close()


@pytest.fixture
def spec(app):
    response = app.test_client().get("/api/v1/openapi.json", headers={"Authorization": "Bearer not-a-key"})
    assert response.status_code == 200 and response.is_json  # public: no key is even looked at
    return response.get_json()


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield path, method.upper(), op


def documented_codes(spec: dict) -> set[tuple[int, str]]:
    """(status, code) of every error response of every operation (the enum of its error.code)."""
    pairs = set()
    for _, _, op in operations(spec):
        for status, response in op["responses"].items():
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            code = schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
            pairs |= {(int(status), value) for value in code.get("enum", [])}
    if "`405 method_not_allowed`" in spec["info"]["description"]:  # any path, with a method it lacks
        pairs.add((405, "method_not_allowed"))
    return pairs


def raised_codes() -> set[tuple[int, str]]:
    """(status, code) of every error the web package can answer with, read from its source."""
    pairs = set(WERKZEUG_CODES)
    for source in (ROOT / "web").rglob("*.py"):
        text = source.read_text()
        pairs |= {(int(s), c) for s, c in re.findall(r'(?:AppError|error_response)\(\s*(\d{3}),\s*"([a-z_]+)"', text)}
        pairs |= {(401, c) for c in re.findall(r'_[Uu]nauthorized\(\s*"([a-z_]+)"', text)}
    # A field the request models refuse is a 400 with its own code (web/contract.validation_error).
    pairs |= {(400, f"invalid_{name}") for model in (SubmitFields, ListQuery, WaitQuery) for name in model.model_fields}
    images = (ROOT / "shared" / "images.py").read_text()  # uploads.validate_image passes these on
    pairs |= {
        (int(s), c)
        for c, s in re.findall(r'ImageError\(\s*"([a-z_]+)",.*?,\s*(\d{3})\s*,?\s*\)', images, re.S)
        if c not in PATH_ONLY
    }
    return pairs


def api_page_codes() -> set[tuple[int, str]]:
    page = (ROOT / "docs" / "api.md").read_text()
    table = page[page.index("| status | codes | when |") :]
    table = table[: table.index("\n\n")]
    return {
        (int(status), code)
        for status, codes in re.findall(r"^\| (\d{3}) \| (.*?) \|", table, re.M)
        for code in re.findall(r"`([a-z_]+)`", codes)
    }


def test_every_route_is_in_the_spec_and_every_operation_is_a_route(app, spec):
    routes = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        if path.startswith("/api/") or rule.endpoint.startswith("health."):
            routes |= {(path, method): rule.endpoint for method in rule.methods & METHODS}
    documented = {(path, method): op["operationId"] for path, method, op in operations(spec)}
    assert sorted(documented) == sorted(routes)
    assert documented == routes  # operationId names the view
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/healthz", "/api/docs"} <= set(spec["paths"])


def test_every_error_code_is_documented(spec):
    raised, documented = raised_codes(), documented_codes(spec)
    assert {
        (415, "not_an_image"),
        (400, "invalid_limit"),
        (401, "invalid_api_key"),
        (429, "rate_limited"),
        (413, "too_many_pixels"),
    } <= raised  # the source scan still finds codes
    assert sorted(raised - NOT_API - documented) == []
    assert sorted(documented - raised) == []  # no code documented that nothing raises
    assert {code for _, code in documented} == set(CODES)
    assert api_page_codes() == documented | (NOT_API - {(500, "internal_error")})


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/webhooks/secret"])
@pytest.mark.parametrize("key", [None, "nk_wrong"])
def test_every_401_carries_the_documented_challenge(app, spec, path, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = app.test_client().get(path, headers=headers)
    documented = spec["paths"][path]["get"]["responses"]["401"]["headers"]["WWW-Authenticate"]
    assert response.status_code == 401 and documented["required"]
    assert re.match(documented["schema"]["pattern"], response.headers["WWW-Authenticate"])
    assert ('error="invalid_token"' in response.headers["WWW-Authenticate"]) == bool(key)


def test_job_schema_lists_the_public_fields(spec):
    job = spec["components"]["schemas"]["Job"]
    assert list(job["properties"]) == list(PUBLIC_FIELDS) == job["required"]
    assert job["additionalProperties"] is False


def test_spec_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema


class Text(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.text, self.scripts, self.links = [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def test_docs_page_shows_every_operation_and_code_from_our_own_files(app, spec):
    client = app.test_client()
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    page = Text(response.get_data(as_text=True))
    text = " ".join(" ".join(page.text).split())
    for path, method, op in operations(spec):
        assert f"{method} {path}" in text and op["summary"] in text
        example = re.sub(r"\{[a-z_]*id\}", "$id", path)
        assert f'"$NARRATOR_URL{example}"' in text, f"no curl example for {method} {path}"
    assert 'curl -s -F image=@examples/photo.jpg "$NARRATOR_URL/api/v1/jobs"' in text
    assert "/api/docs" in client.get("/").get_data(as_text=True)  # the home page leads to it
    for _, code in documented_codes(spec):
        assert code in text
    for name in PUBLIC_FIELDS:
        assert name in text
    assert page.scripts == []  # nothing to run, nothing inline for the CSP to block
    assert page.links and all(href.startswith("/static/") for href in page.links)  # no CDN
    for href in page.links:
        assert client.get(href).status_code == 200
