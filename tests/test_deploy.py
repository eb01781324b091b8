"""The deployment files: docker-compose.yml validated by Debian's docker-compose (no engine needed),
the nginx proxy's config and the gunicorn config they run."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


from tests.conftest import requires_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
needs_compose = requires_tool(COMPOSE is not None, "docker-compose")


def compose_config(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "PORT", "BIND"))}
    return subprocess.run([COMPOSE, "config"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@needs_compose
def test_compose_file_is_valid_with_its_secrets():
    import yaml

    result = compose_config(MINIO_ROOT_USER="admin", MINIO_ROOT_PASSWORD="secret-password")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"redis", "minio", "create-bucket", "web", "worker"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["web"]["build"]["dockerfile"] == "Dockerfile.web"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.worker"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    volumes = services["worker"]["volumes"]
    assert any((":/models" in v if isinstance(v, str) else v.get("target") == "/models") for v in volumes)
    for name in ("redis", "minio", "web"):
        assert "healthcheck" in services[name], name
    assert services["worker"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "secret-password"
    assert "ports" not in services["worker"], "workers scale with --scale, so they publish no ports"


@needs_compose
def test_compose_refuses_to_start_without_secrets():
    result = compose_config()
    assert result.returncode != 0
    assert "MINIO_ROOT_USER" in result.stderr


def test_web_image_has_no_torch():
    dockerfile = (ROOT / "Dockerfile.web").read_text()
    assert "requirements/web.txt" in dockerfile
    web_requirements = (ROOT / "requirements" / "web.txt").read_text().lower()
    assert not re.search(r"^\s*(torch|transformers)\b", web_requirements, re.M)
    assert "worker/" not in dockerfile


def test_worker_image_runs_one_solo_worker_on_cuda_pytorch():
    dockerfile = (ROOT / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM pytorch/pytorch:[\w.\-]+cuda", dockerfile, re.M)
    assert "--pool" in dockerfile and "solo" in dockerfile
    assert "ffmpeg" in dockerfile


# --- the proxy in front of web, and gunicorn's own settings ----------------------------------------

def _ports(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of each published port, in v1's short or v2's long syntax."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].rsplit(":", 2)
            found.append(tuple([""] * (3 - len(parts)) + parts))
    return found


def _mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume, in either syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((volume.get("source", ""), volume["target"], bool(volume.get("read_only"))))
        else:
            source, target, *mode = volume.split(":")
            found.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return found


@needs_compose
def test_web_is_reached_only_through_a_buffering_proxy():
    import yaml

    result = compose_config(MINIO_ROOT_USER="admin", MINIO_ROOT_PASSWORD="secret-password")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    proxy, web = services["proxy"], services["web"]
    assert proxy["image"].startswith("nginx:")
    assert not web.get("ports"), "web publishes no port: clients go through the proxy"
    assert str(web["environment"]["PROXY_HOPS"]) == "1"
    # By default everything listens on this machine only.
    assert _ports(proxy) == [("127.0.0.1", "8000", "8000")]
    assert all(host == "127.0.0.1" for host, _, _ in _ports(services["minio"]))
    assert any(Path(source) == ROOT / "deploy" / "nginx.conf" and target == "/etc/nginx/nginx.conf" and ro
               for source, target, ro in _mounts(proxy))
    assert "web" in proxy["depends_on"] and "healthcheck" in proxy

    wide = compose_config(MINIO_ROOT_USER="admin", MINIO_ROOT_PASSWORD="secret-password",
                          BIND="0.0.0.0", PORT="8123")
    assert wide.returncode == 0, wide.stderr
    assert _ports(yaml.safe_load(wide.stdout)["services"]["proxy"]) == [("0.0.0.0", "8123", "8000")]


def _nginx_directives() -> dict[str, list[str]]:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    text = re.sub(r"#[^\n]*", "", text)
    found: dict[str, list[str]] = {}
    for statement in re.findall(r"([a-z_0-9]+)\s+([^;{}]*);", text):
        found.setdefault(statement[0], []).append(statement[1].strip())
    return found


def _size_bytes(value: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * units[unit]


def test_nginx_config_buffers_bounds_and_forwards():
    from shared.settings import Settings
    from web.app import FORM_OVERHEAD

    d = _nginx_directives()
    upload = int(Settings.model_fields["max_upload_mb"].default * 1024 * 1024)  # not this shell's
    compose_default = re.search(r"MAX_UPLOAD_MB: \$\{MAX_UPLOAD_MB:-(\d+)\}", (ROOT / "docker-compose.yml").read_text())
    assert compose_default and int(compose_default.group(1)) * 1024 * 1024 == upload
    # nginx's limit lets every upload the app accepts through, and little more.
    body_limit = _size_bytes(d["client_max_body_size"][0])
    assert upload + FORM_OVERHEAD <= body_limit <= upload + 2 * 1024 * 1024
    assert d.get("proxy_request_buffering", ["on"]) == ["on"], "bodies must be buffered before gunicorn sees them"
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout", "proxy_connect_timeout",
                 "proxy_send_timeout", "proxy_read_timeout"):
        assert name in d, name
    # nginx gives up on gunicorn later than a submit can take (S3 timeouts: about 15 s).
    assert int(d["proxy_read_timeout"][0].rstrip("s")) >= 30
    assert d["server"] == ["web:8000"] and d["proxy_pass"] == ["http://web"]
    headers = {value.split(None, 1)[0]: value.split(None, 1)[1] for value in d["proxy_set_header"]}
    assert headers["X-Forwarded-Proto"] == "$scheme" and headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Prefix"] == '""', "a client's own X-Forwarded-Prefix must not pass"
    # The upstream keeps connections no longer than gunicorn does.
    conf = _gunicorn_conf({})
    assert int(d["keepalive_timeout"][-1].rstrip("s")) < conf["keepalive"]


def _gunicorn_conf(env: dict) -> dict:
    """The settings web/gunicorn_conf.py gives under `env`, as gunicorn itself reads them."""
    code = ("import json, sys; from gunicorn.app.base import Application\n"
            "class A(Application):\n"
            "    def init(self, *a): return None\n"
            "    def load(self): return None\n"
            "sys.argv = ['gunicorn', '-c', 'web/gunicorn_conf.py', 'x:y']\n"
            "app = A()\n"
            "print(json.dumps({k: getattr(app.cfg, k) for k in ('bind', 'worker_class_str', 'workers', 'worker_connections', "
            "'timeout', 'graceful_timeout', 'keepalive', 'limit_request_line', 'limit_request_fields', "
            "'limit_request_field_size', 'preload_app')}))\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("BIND", "PORT", "WEB_CONCURRENCY")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    return json.loads(result.stdout.strip().splitlines()[-1])


def test_gunicorn_config_is_the_one_used_everywhere():
    conf = _gunicorn_conf({})
    assert conf["worker_class_str"] == "gevent" and conf["preload_app"] is False
    assert conf["bind"] == ["127.0.0.1:8000"], "this machine only unless BIND says otherwise"
    assert conf["workers"] >= 2 and conf["worker_connections"] >= 100
    assert conf["timeout"] <= 60 and conf["graceful_timeout"] <= 60 and 1 <= conf["keepalive"] <= 10
    assert conf["limit_request_line"] <= 8190 and conf["limit_request_fields"] <= 100
    other = _gunicorn_conf({"BIND": "0.0.0.0", "PORT": "9123", "WEB_CONCURRENCY": "3"})
    assert other["bind"] == ["0.0.0.0:9123"] and other["workers"] == 3
    assert _gunicorn_conf({"BIND": "::1"})["bind"] == ["[::1]:8000"]
    assert re.search(r"^gevent==[\d.]+", (ROOT / "requirements" / "web.txt").read_text(), re.M)
    dockerfile = (ROOT / "Dockerfile.web").read_text()
    assert re.search(r'CMD \["gunicorn", "-c", "web/gunicorn_conf.py"', dockerfile)
    assert re.search(r"^ENV .*BIND=0\.0\.0\.0", dockerfile, re.M)
    up = (ROOT / "scripts" / "up.sh").read_text()
    assert "-c web/gunicorn_conf.py" in up and 'BIND="${BIND:-127.0.0.1}"' in up
    assert "--bind" not in up and "--threads" not in up
