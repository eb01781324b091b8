"""Hub ids with the model hub unreachable: a quick, clear ModelLoadError instead of minutes of retries.

conftest.py sets HF_HUB_OFFLINE=1 for the session, and huggingface_hub copies HF_ENDPOINT, HF_HOME
and HF_HUB_OFFLINE into huggingface_hub.constants when it is imported; `hub_env` patches both the
environment and those constants (monkeypatch undoes them), so these tests really take the network
path, against local sockets that refuse or never answer, with an empty cache in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support.net import free_port
from tests.support.photos import sample_images
from tests.support.servers import connections_waiting, timed_runs, within_one_probe
from worker.engine import ConfigError, Engine, hub
from worker.engine.hub import ModelLoadError

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 30.0  # seconds the brief allows; the probe's deadline is a few seconds
HUB_IDS = {
    "caption_model": "Salesforce/blip-image-captioning-base",
    "story_model": "Qwen/Qwen2.5-1.5B-Instruct",
    "speech_model": "facebook/mms-tts-eng",
}
FIXES = ("MODELS=tiny make up", "local model folder", "HF_HUB_OFFLINE=1", "HF_HOME")


class Blackhole(str):
    """An endpoint URL whose server accepts TCP connections and never answers (the kernel completes
    the handshake for the listen backlog; nothing ever reads or writes)."""

    sock: socket.socket

    def touched(self) -> bool:
        """Whether anything connected to it so far."""
        self.sock.setblocking(False)
        try:
            self.sock.accept()[0].close()
            return True
        except BlockingIOError:
            return False


@pytest.fixture
def blackhole():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        url = Blackhole(f"http://127.0.0.1:{sock.getsockname()[1]}")
        url.sock = sock
        yield url


@pytest.fixture
def closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound, then closed: connections are refused


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Returns configure(endpoint, offline=False): the environment and huggingface_hub's constants
    as a process started with HF_ENDPOINT=endpoint, HF_HOME=<empty tmp dir> would have them."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    home.mkdir()

    def configure(endpoint: str, offline: bool = False) -> Path:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            monkeypatch.delenv(name, raising=False)
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "default_cache_path"):
            monkeypatch.setattr(constants, name, str(home / "hub"))
        return home / "hub"

    hub.forget_probes()
    yield configure
    hub.forget_probes()


def settings(**models) -> Settings:
    return Settings(
        **{**HUB_IDS, **models}, device="cpu", dtype="auto", quantize="none", story_adapter=None, story_words=10
    )


def load_fails(engine: Engine) -> tuple[ModelLoadError, float]:
    # The model classes' first import (seconds on a busy machine) is not the time the load takes to fail.
    from transformers import (  # noqa: F401
        AutoModelForCausalLM,
        AutoTokenizer,
        BlipForConditionalGeneration,
        BlipProcessor,
        VitsModel,
    )

    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    return info.value, time.monotonic() - start


def assert_clear(message: str, setting: str) -> None:
    assert f"{setting.upper()}={HUB_IDS[setting]}" in message
    for fix in FIXES:
        assert fix in message, message
    assert "\n" not in message  # one line: the CLI, the logs and /readyz show it as it is


@pytest.mark.parametrize("kind", ["blackhole", "closed_port"])
def test_unreachable_hub_fails_fast_and_clearly(request, hub_env, kind):
    endpoint = request.getfixturevalue(kind)
    hub_env(endpoint)
    error, seconds = load_fails(Engine(settings()))
    print(f"\n{kind}: ModelLoadError after {seconds:.2f} s: {error}")
    assert seconds < LIMIT
    assert isinstance(error, ConfigError)  # the worker's start-up check and the CLI handle it
    assert_clear(str(error), "caption_model")
    assert endpoint in str(error) and "cannot be reached" in str(error)
    assert ("no answer within" if kind == "blackhole" else "refused") in str(error)
    # The probe runs once per process: the next job fails at once instead of paying again.
    error, again = load_fails(Engine(settings()))
    print(f"{kind}: again after {again:.2f} s")
    assert again < 1.0 and "cannot be reached" in str(error)


def test_offline_without_the_model_in_the_cache_fails_at_once(hub_env, blackhole):
    cache = hub_env(blackhole, offline=True)
    error, seconds = load_fails(Engine(settings()))
    print(f"\nHF_HUB_OFFLINE=1: ModelLoadError after {seconds:.2f} s: {error}")
    assert seconds < 5
    assert_clear(str(error), "caption_model")
    assert "not in the Hugging Face cache" in str(error) and str(cache) in str(error)


@pytest.mark.parametrize("setting", ["story_model", "speech_model"])
def test_every_model_setting_is_named(hub_env, closed_port, tiny_models_dir, setting):
    hub_env(closed_port)
    local = {name: str(tiny_models_dir / name.removesuffix("_model")) for name in HUB_IDS if name != setting}
    error, seconds = load_fails(Engine(settings(**local)))
    assert seconds < LIMIT
    assert_clear(str(error), setting)


@pytest.fixture
def empty_hub():
    """A hub endpoint that answers every request with 404: reachable, but it holds no model."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_hub_without_the_model_is_a_model_load_error(hub_env, empty_hub):
    hub_env(empty_hub)
    start = time.monotonic()
    with pytest.raises(
        ModelLoadError, match=r"CAPTION_MODEL=Salesforce/blip-typo could not be loaded from " + empty_hub
    ):
        Engine(settings(caption_model="Salesforce/blip-typo")).load()
    assert time.monotonic() - start < LIMIT


def fill_cache(cache: Path, tiny_models_dir: Path) -> None:
    """The Hugging Face cache layout (refs/main -> snapshots/<commit>/files) holding the tiny models
    under the real hub ids, as a machine with network would have left it."""
    commit = "0" * 40
    for setting, repo_id in HUB_IDS.items():
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        shutil.copytree(tiny_models_dir / setting.removesuffix("_model"), repo / "snapshots" / commit)


@pytest.mark.timeout(60)  # a request to the blackhole would wait out huggingface_hub's retries (minutes)
@pytest.mark.parametrize("offline", [False, True], ids=["hub-blackholed", "HF_HUB_OFFLINE"])
def test_models_in_the_cache_load_without_the_hub(hub_env, blackhole, tiny_models_dir, offline, monkeypatch):
    from huggingface_hub import constants

    fill_cache(hub_env(blackhole, offline=offline), tiny_models_dir)
    # huggingface_hub 2.x fetches an "agent harnesses" list for its user-agent header once per
    # process (3 s timeout, best effort) unless telemetry is off; that request is not a model load.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    start = time.monotonic()
    seconds = Engine(settings()).load()
    elapsed = time.monotonic() - start
    print(f"\ncached hub ids ({'offline' if offline else 'hub blackholed'}): loaded in {elapsed:.2f} s")
    assert set(seconds) == {"caption", "story", "speech"}
    assert elapsed < LIMIT
    assert not hub._probes and not blackhole.touched()  # nothing asked the hub


@pytest.mark.parametrize("offline", [False, True], ids=["hub-refusing", "HF_HUB_OFFLINE"])
def test_a_partly_cached_model_is_a_model_load_error(hub_env, closed_port, tiny_models_dir, offline):
    fill_cache(cache := hub_env(closed_port, offline=offline), tiny_models_dir)
    for path in cache.glob("models--Salesforce--*/snapshots/*/model.safetensors"):
        path.unlink()  # an interrupted download: config.json is there, the weights are not
    error, seconds = load_fails(Engine(settings()))
    print(f"\npartly cached ({'offline' if offline else 'hub refusing'}): {seconds:.2f} s: {error}")
    assert seconds < LIMIT
    assert_clear(str(error), "caption_model")
    assert "is not complete in the Hugging Face cache" in str(error)
    assert ("offline mode (HF_HUB_OFFLINE=1)" if offline else "cannot be reached") in str(error)


@pytest.mark.timeout(60)
def test_tiny_local_models_still_load(hub_env, blackhole, tiny_models_dir):
    hub_env(blackhole)  # the network path is live, but local folders never touch it
    local = {name: str(tiny_models_dir / name.removesuffix("_model")) for name in HUB_IDS}
    seconds = Engine(settings(**local)).load()
    assert set(seconds) == {"caption", "story", "speech"}
    assert not hub._probes and not blackhole.touched()


@pytest.mark.slow
def test_an_unreachable_s3_adapter_fails_fast(monkeypatch, blackhole, tiny_models_dir, tmp_path):
    from worker.engine.adapters import AdapterError

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", blackhole)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    local = {name: str(tiny_models_dir / name.removesuffix("_model")) for name in HUB_IDS}
    engine = Engine(
        Settings(
            **local, device="cpu", story_adapter="s3://narrator/adapters/v1", model_cache_dir=str(tmp_path / "cache")
        )
    )
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    seconds = time.monotonic() - start
    print(f"\nS3 adapter blackholed: ModelLoadError after {seconds:.2f} s: {info.value}")
    assert seconds < LIMIT
    assert isinstance(info.value, AdapterError)  # what the CLI and older callers catch
    assert "STORY_ADAPTER 's3://narrator/adapters/v1'" in str(info.value) and "cannot be reached" in str(info.value)


@pytest.mark.process
def test_cli_exits_2_with_the_message_when_the_hub_is_blackholed(blackhole, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(sample_images()["rgb.jpg"])
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "QUANTIZE",
            "DTYPE",
            "STORY_ADAPTER",
        )
    }
    env.update({k.upper(): v for k, v in HUB_IDS.items()})
    env.update(HF_ENDPOINT=blackhole, HF_HOME=str(tmp_path / "hf-home"), DEVICE="cpu", PYTHONPATH=str(ROOT))

    command = [sys.executable, "-m", "worker", "narrate", str(photo), "-o", str(tmp_path / "x.mp3")]
    # The same command offline beside it (no probe): what the imports and checks cost on this machine now.
    (result, seconds), (offline, offline_seconds) = timed_runs(
        (command, tmp_path, env), (command, tmp_path, {**env, "HF_HUB_OFFLINE": "1"}), timeout=120
    )
    print(
        f"\nCLI with the hub blackholed: exit {result.returncode} after {seconds:.2f} s "
        f"(offline: {offline_seconds:.2f} s): {result.stderr.strip()}"
    )
    assert offline.returncode == 2 and result.returncode == 2, result.stderr
    assert connections_waiting(blackhole.sock) == 1  # one probe of the hub, no retries
    # Within the limit, or on a slow machine of the offline run.
    assert seconds < within_one_probe(LIMIT, offline_seconds)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert_clear(lines[0], "caption_model")
    assert not (tmp_path / "x.mp3").exists()
