"""Load a model from a local folder, the Hugging Face cache or the hub, and fail fast when none works.

Without this, a hub id on a machine that cannot reach the hub spends minutes in huggingface_hub's
retries and then fails with a message that names neither the network nor the fix. Here, before any
from_pretrained on a hub id:

- a local folder is loaded as it is;
- a model whose files are already in the Hugging Face cache is loaded from it (local_files_only),
  without contacting the hub (delete it from the cache to get a newer revision);
- with HF_HUB_OFFLINE=1 a model missing from the cache is a ModelLoadError at once;
- otherwise the hub endpoint (HF_ENDPOINT) is probed, once per process, with a short deadline; if it
  does not answer the load stops with a ModelLoadError that names the setting and the fixes.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, at import time, into
huggingface_hub.constants; this module reads those constants when it runs, as huggingface_hub does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from worker.engine.devices import ConfigError

T = TypeVar("T")

PROBE_TIMEOUT = 5.0  # seconds the hub endpoint has to answer one HEAD request (DNS included)
PROBE_RETRY_AFTER = 60.0  # a failed probe is remembered this long, so later jobs fail at once

MODEL_SETTINGS = ("CAPTION_MODEL", "STORY_MODEL", "SPEECH_MODEL")

_probe_lock = threading.Lock()
_probes: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, None if it answered else why not)


class ModelLoadError(ConfigError):
    """A model (or adapter) setting that cannot be loaded here; the message names it and the fixes."""


def fixes(setting: str) -> str:
    others = ", ".join(name for name in MODEL_SETTINGS if name != setting)
    return (
        f"Fixes: `MODELS=tiny make up` for the offline tiny models; or set {setting} (and {others}) to "
        f"local model folders; or fill the Hugging Face cache (HF_HOME) on a machine with network and run "
        f"with HF_HUB_OFFLINE=1."
    )


def is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(str(name)))


def cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_cache(repo_id: str) -> bool:
    """True when the repo's config.json at revision main is in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir())
    except Exception:  # not a valid repo id: not cached
        return False
    return isinstance(found, str)


def forget_probes() -> None:
    """Drop the remembered probe results (tests; or after the network came back)."""
    with _probe_lock:
        _probes.clear()


def _head(url: str, timeout: float) -> str | None:
    """None when url answers with any HTTP status within timeout, else why not (one line)."""
    from huggingface_hub import get_session

    result: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(url, timeout=timeout, follow_redirects=False)
            result.append(None)
        except Exception as exc:  # connection refused, timeout, DNS, TLS, proxy...
            if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
                result.append(f"no answer within {timeout:g} s ({type(exc).__name__})")
            else:
                result.append(f"{type(exc).__name__}: {_first_line(exc)}")

    # A thread bounds the whole probe: name resolution is not covered by the HTTP client's timeouts.
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return result[0] if result else f"no answer within {timeout:g} s"


def hub_unreachable(url: str | None = None) -> str | None:
    """Why the hub endpoint cannot be reached, or None when it answers; probed once per process
    (a failure is remembered for PROBE_RETRY_AFTER seconds)."""
    url = (url or endpoint()).rstrip("/")
    with _probe_lock:
        known = _probes.get(url)
        if known is not None and (known[1] is None or time.monotonic() - known[0] < PROBE_RETRY_AFTER):
            return known[1]
        why = _head(url + "/", PROBE_TIMEOUT)
        _probes[url] = (time.monotonic(), why)
        return why


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def load_pretrained(setting: str, name: str, load: Callable[[bool], T]) -> T:
    """Run load(local_files_only) for the model `name` given in `setting` (e.g. CAPTION_MODEL).

    `load` does the from_pretrained calls and passes local_files_only on to each of them. A hub id
    that cannot be loaded here raises ModelLoadError quickly (see the module docstring)."""
    if is_local(name):
        return load(False)
    label = f"{setting}={name}"
    where = f"in the Hugging Face cache ({cache_dir()})"
    if in_cache(name):
        where = f"complete {where}"
        try:
            return load(True)
        except OSError as exc:  # some files are missing from the cache: download them, if allowed
            if offline():
                raise ModelLoadError(
                    f"{label} is not {where} ({_first_line(exc)}) and "
                    f"offline mode (HF_HUB_OFFLINE=1) forbids downloading the rest. {fixes(setting)}"
                ) from None
    elif offline():
        raise ModelLoadError(
            f"{label} is not {where} and offline mode (HF_HUB_OFFLINE=1) forbids downloading it. {fixes(setting)}"
        )
    why = hub_unreachable()
    if why is not None:
        raise ModelLoadError(
            f"{label} is not {where} and the model hub {endpoint()} "
            f"(HF_ENDPOINT) cannot be reached: {why}. {fixes(setting)}"
        )
    try:
        return load(False)
    except OSError as exc:  # a typo in the id, a gated repo, the network failing mid-download...
        raise ModelLoadError(f"{label} could not be loaded from {endpoint()}: {_first_line(exc)}") from exc
