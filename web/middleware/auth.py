"""Who is asking: API keys, browser sessions, and the owner a request acts for.

An owner is a string stored on each job (Job.owner):

- "key:<name>" for a request with `Authorization: Bearer <key>` (keys are made by
  `flask --app web.app keys create NAME`; Redis keeps only the key's SHA-256, never the key);
- "session:<id>" for a browser whose signed session cookie (SECRET_KEY) holds an id, which the
  form creates when it first submits a photo;
- None for an anonymous API call: such a job is reachable by its id only and never listed.

Sessions are cookies, which a browser also sends with requests another site makes it send. So the
API honours a session for reading (GET, HEAD: the job page polls the job and loads its photo and
audio through it) but never for changing anything: an API POST acts for its key or for nobody. The
pages' own POSTs (the form, cancel) are checked for their origin instead (web/pages/jobs.py).

Redis layout: `apikey:<sha256 hex of the key>` -> name, and the hash `apikeys`: name -> JSON record
{"created_at", "key_hash"}.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
import time
from urllib.parse import urlsplit

from flask import g, request, session
from flask.sessions import SecureCookieSessionInterface

from shared.webhooks.secrets import secret_key
from web.middleware.errors import AppError, error_response
from web.services import services

KEYS_HASH = "apikeys"
KEY_PREFIX = "nk_"  # recognisable in logs and secret scanners
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SESSION_FIELD = "owner"

# KEYS: the names hash, the key's lookup entry. ARGV: name, record. 0: the name exists already.
_CREATE_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


class KeyStoreError(Exception):
    """A keys command that cannot be done (the name exists, is unknown or is not valid)."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def lookup_key(key_hash_hex: str) -> str:
    return f"apikey:{key_hash_hex}"


# --- the key store (used by the `keys` commands and by requests) ---------------------------------


def create_key(redis_client, name: str) -> str:
    """A new key for `name`; returns the key, which is never stored."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise KeyStoreError(
            "a key name is 1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = key_hash(key)
    record = json.dumps({"created_at": time.time(), "key_hash": digest})
    created = redis_client.register_script(_CREATE_LUA)(keys=[KEYS_HASH, lookup_key(digest)], args=[name, record])
    if created != 1:
        raise KeyStoreError(f"a key named '{name}' exists already (revoke it first to replace it)")
    return key


def list_keys(redis_client) -> list[dict]:
    """[{"name", "created_at"}], oldest first; never the key (it is not stored)."""
    rows = []
    for name, raw in redis_client.hgetall(KEYS_HASH).items():
        name = name.decode() if isinstance(name, bytes) else name
        try:
            created = float(json.loads(raw)["created_at"])
        except (ValueError, KeyError, TypeError):
            created = 0.0
        rows.append({"name": name, "created_at": created})
    return sorted(rows, key=lambda row: (row["created_at"], row["name"]))


def revoke_key(redis_client, name: str) -> None:
    raw = redis_client.hget(KEYS_HASH, name)
    if raw is None:
        raise KeyStoreError(f"no key is named '{name}'")
    pipe = redis_client.pipeline(transaction=True)
    try:
        pipe.delete(lookup_key(json.loads(raw)["key_hash"]))
    except (ValueError, KeyError, TypeError):
        pass  # a damaged record: removing the name still revokes nothing less than before
    pipe.hdel(KEYS_HASH, name)
    pipe.delete(secret_key(f"key:{name}"))  # a key made again under this name signs with a new secret
    pipe.execute()


def key_name(redis_client, key: str) -> str | None:
    """The name of a valid (not revoked) key, else None."""
    if not key or len(key) > 200:
        return None
    name = redis_client.get(lookup_key(key_hash(key)))
    if name is None:
        return None
    return name.decode() if isinstance(name, bytes) else name


# --- requests ---------------------------------------------------------------------------------------


class _Unauthorized(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _bearer_owner() -> str | None:
    """ "key:<name>" for a valid key, None when no Authorization header was sent; raises
    _Unauthorized for any other Authorization header (a wrong, revoked or malformed key)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _Unauthorized("invalid_api_key", "Send the API key as 'Authorization: Bearer KEY'.")
    name = key_name(services().redis, key.strip())
    if name is None:
        raise _Unauthorized("invalid_api_key", "The API key is not valid (wrong, or revoked).")
    return f"key:{name}"


def client_network() -> str:
    """Whom an anonymous request counts as: its client's address (the proxy's client with
    PROXY_HOPS), an IPv6 client by its /64, which one host can hold whole. "addr:..."."""
    raw = request.remote_addr or "unknown"
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return f"addr:{raw}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return f"addr:{address.ipv4_mapped}"
        return f"addr:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"addr:{address}"


SESSION_COOKIE = "narrator_session"


class SessionCookies(SecureCookieSessionInterface):
    """The browser session's cookie: Secure whenever the page is (PUBLIC_BASE_URL is https, or the
    request came over https, as a trusted proxy says), and then named `__Host-...`, which browsers
    keep only from a secure origin, for this host, on path / (no other subdomain or path can plant
    or overwrite it)."""

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def get_cookie_name(self, app) -> str:
        return f"__Host-{SESSION_COOKIE}" if self.get_cookie_secure(app) else SESSION_COOKIE


def session_id() -> str | None:
    value = session.get(SESSION_FIELD)
    return value if isinstance(value, str) and value else None


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


def _session_counts() -> bool:
    # Cookies ride along with cross-site requests: in the API they only ever authorise reads.
    return not request.path.startswith("/api/") or request.method in SAFE_METHODS


def _resolve() -> str | None:
    """Raises _Unauthorized for a bad Authorization header."""
    owner = _bearer_owner()
    if owner is None and _session_counts():
        sid = session_id()
        owner = f"session:{sid}" if sid else None
    return owner


def current_owner() -> str | None:
    """The owner this request acts for: the key's owner if a valid key was sent, else the browser
    session's owner if there is one (in the API: for reads only), else None.

    Resolved once per request (by `authenticate`, before any view runs) and kept in flask.g."""
    if "narrator_owner" not in g:
        try:
            g.narrator_owner = _resolve()
        except _Unauthorized:
            return None  # not cached: authenticate() answers such a request with a 401
    return g.narrator_owner


CHALLENGE = 'Bearer realm="narrator"'  # every 401 carries it (RFC 9110)


def _unauthorized(code: str, message: str):
    challenge = CHALLENGE + (', error="invalid_token"' if code == "invalid_api_key" else "")
    return error_response(401, code, message, {"WWW-Authenticate": challenge})


def authenticate():
    """before_request: refuse a bad key (401 invalid_api_key) and, with REQUIRE_API_KEY, an API call
    without a key or a browser session (401 api_key_required). Health checks, static files and the
    API's contract (/api/v1/openapi.json, /api/docs) are never asked."""
    if request.endpoint in (None, "static") or request.blueprint in ("health", "openapi"):
        return None
    try:
        g.narrator_owner = owner = _resolve()
    except _Unauthorized as exc:
        return _unauthorized(exc.code, exc.message)
    if owner is None and request.path.startswith("/api/") and services().settings.require_api_key:
        return _unauthorized("api_key_required", "This server requires an API key: send 'Authorization: Bearer KEY'.")
    return None


def require_owner() -> str:
    """For endpoints that only make sense for a known caller (listing jobs)."""
    owner = current_owner()
    if owner is None:
        raise AppError(
            401,
            "api_key_required",
            "Listing jobs needs an API key ('Authorization: Bearer KEY') or a browser session.",
            {"WWW-Authenticate": CHALLENGE},
        )
    return owner


def may_see(owner_of_job: str | None) -> bool:
    """Ownerless jobs are reachable by anyone who has their id; the others by their owner only."""
    return owner_of_job is None or owner_of_job == current_owner()


# --- where the app lives -----------------------------------------------------------------------------

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """scheme://host[:port], lower case, without a default port; None for anything else ("null")."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    suffix = f":{port}" if port and port != DEFAULT_PORTS[parts.scheme] else ""
    return f"{parts.scheme}://{host}{suffix}".lower()


def public_origin() -> str | None:
    """The app's origin as its users reach it: PUBLIC_BASE_URL's when set, else what the request
    says (after ProxyFix, when PROXY_HOPS trusts a proxy's X-Forwarded-* headers)."""
    base = services().settings.public_base_url
    return origin_of(base) if base else origin_of(request.host_url)


def same_origin() -> bool:
    """Strict same-origin check for the pages' POSTs (CSRF): Origin, else Referer, must be the
    app's public origin; a request with neither is refused too."""
    expected = public_origin()
    sent = request.headers.get("Origin") or request.headers.get("Referer")
    return expected is not None and sent is not None and origin_of(sent) == expected
