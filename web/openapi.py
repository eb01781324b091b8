"""The API's contract: /api/v1/openapi.json (OpenAPI 3.1, web/openapi_spec.py) and /api/docs, the same
document as a readable page, rendered here on the server (no script, no CDN: the app's CSP holds).

Neither asks who is calling (web/auth.py skips this blueprint, as it skips the health checks): the
contract is public, also with REQUIRE_API_KEY.
"""

from __future__ import annotations

import re

from flask import Blueprint, jsonify, render_template
from markupsafe import Markup, escape

from web.openapi_schemas import CODES
from web.openapi_spec import build_spec

bp = Blueprint("openapi", __name__)
SPEC = build_spec()
METHODS = ("get", "post", "put", "patch", "delete")


def type_text(schema: dict) -> str:
    """A schema in a few words: `string (date-time) | null`, `Job`, `integer, 10 to 200`."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "allOf" in schema:
        return " & ".join(type_text(part) for part in schema["allOf"])
    if "anyOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return type_text(rest) + "; " + " or ".join(type_text(part) for part in schema["anyOf"])
    if "const" in schema:
        return f'"{schema["const"]}"'
    kinds = schema.get("type", "")
    text = " | ".join(kinds) if isinstance(kinds, list) else kinds
    if schema.get("format"):
        text = f"{text} ({schema['format']})" if text else schema["format"]
    if "items" in schema:
        text += " of " + type_text(schema["items"])
    details = []
    if "enum" in schema:
        details.append("one of " + ", ".join("null" if v is None else str(v) for v in schema["enum"]))
    if "minimum" in schema or "maximum" in schema:
        details.append(f"{schema.get('minimum', '…')} to {schema.get('maximum', '…')}")
    if "maxLength" in schema:
        details.append(f"at most {schema['maxLength']} characters")
    if "pattern" in schema:
        details.append(f"matching {schema['pattern']}")
    return ", ".join(filter(None, [text, *details])) or "any"


def fields(schema: dict) -> list[dict]:
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "type": type_text(prop),
            "required": name in required,
            "description": prop.get("description", ""),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def error_codes(response: dict) -> list[dict]:
    """The codes an error response documents (its schema's error.code enum)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    codes = schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {}).get("enum", [])
    return [{"code": code, "meaning": CODES.get(code, "")} for code in codes]


def response_view(status: str, response: dict) -> dict:
    codes = error_codes(response)  # an error's description is "Reason: `code`: meaning; ..."
    content = response.get("content", {}).items()
    headers = response.get("headers", {}).items()
    return {
        "status": status,
        "codes": codes,
        "description": response["description"].split(": ", 1)[0] if codes else response["description"],
        "types": [f"{media}: {'Error' if codes else type_text(body.get('schema', {}))}" for media, body in content],
        "headers": [{"name": name, "description": h["description"]} for name, h in headers],
    }


def security_text(security: list) -> str:
    if not security:
        return "none (public)"
    names = ["anonymous" if not item else " + ".join(item) for item in security]
    return " or ".join(names)


def docs_view(spec: dict) -> dict:
    operations = []
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            body = op.get("requestBody", {}).get("content", {})
            operations.append(
                {
                    "id": op["operationId"].replace(".", "-"),
                    "method": method.upper(),
                    "path": path,
                    "tag": op["tags"][0],
                    "summary": op["summary"],
                    "description": op.get("description", ""),
                    "security": security_text(op.get("security", spec.get("security", []))),
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "type": type_text(p["schema"]),
                            "description": p.get("description", ""),
                        }
                        for p in op.get("parameters", [])
                    ],
                    "body": [{"media": media, "fields": fields(b["schema"])} for media, b in body.items()],
                    "responses": [response_view(status, r) for status, r in sorted(op["responses"].items())],
                }
            )
    schemas = [
        {"name": name, "description": schema.get("description", ""), "fields": fields(schema)}
        for name, schema in spec["components"]["schemas"].items()
    ]
    return {
        "info": spec["info"],
        "operations": operations,
        "schemas": schemas,
        "codes": [{"code": code, "meaning": text} for code, text in CODES.items()],
    }


@bp.app_template_filter("ticks")
def ticks(text: str) -> Markup:
    """The document's `code` spans as <code>, everything else escaped."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


@bp.get("/api/v1/openapi.json")
def spec():
    response = jsonify(SPEC)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/api/docs")
def docs():
    return render_template("docs.html", view=docs_view(SPEC))
