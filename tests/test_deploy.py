"""The deployment files: docker-compose.yml validated by Debian's docker-compose (no engine needed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


from tests.conftest import requires_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
pytestmark = requires_tool(COMPOSE is not None, "docker-compose")


def compose_config(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "PORT"))}
    return subprocess.run([COMPOSE, "config"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


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
