"""The deployment files: docker-compose.yml validated by Debian's docker-compose (no engine needed),
the nginx proxy's config and the gunicorn config they run."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import requires_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
needs_compose = requires_tool(COMPOSE is not None, "docker-compose")


# MinIO's administrator (create-bucket only) and the app's own user (web, worker, webhooks).
SECRETS = {
    "MINIO_ROOT_USER": "admin",
    "MINIO_ROOT_PASSWORD": "root-password",
    "S3_ACCESS_KEY": "story-app",
    "S3_SECRET_KEY": "app-password",
    "SECRET_KEY": "session-signing-key",
}
APP_SERVICES = ("web", "worker", "webhooks")


def compose_config(*options: str, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "MINIO_",
                "PORT",
                "BIND",
                "S3_",
                "BUCKET",
                "PUBLIC_",
                "SECRET_KEY",
                "WEBHOOK_",
                "REQUIRE_API_KEY",
                "REDIS_",
                "COMPOSE_",
            )
        )
    }
    return subprocess.run(
        [COMPOSE, *options, "config"], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def compose_services(*options: str, **env: str) -> dict:
    import yaml

    result = compose_config(*options, **{**SECRETS, **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def _unescape(text: str) -> str:
    """A string as the container gets it: `docker-compose config` writes a literal $ as $$."""
    return text.replace("$$", "$")


@needs_compose
def test_compose_file_is_valid_with_its_secrets():
    services = compose_services()
    assert {"redis", "minio", "create-bucket", "web", "worker", "webhooks", "proxy"} <= set(services)
    assert "--appendonly yes" in _unescape(services["redis"]["command"][0])
    # Docker Hub no longer has MinIO's images: they come from quay.io, pinned.
    for name in ("minio", "create-bucket"):
        assert re.fullmatch(r"quay\.io/minio/(minio|mc):RELEASE\.[\dTZ-]+", services[name]["image"]), name
    assert services["web"]["build"]["dockerfile"] == "Dockerfile.web"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.worker"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    volumes = services["worker"]["volumes"]
    assert any((":/models" in v if isinstance(v, str) else v.get("target") == "/models") for v in volumes)
    for name in ("redis", "minio", "web"):
        assert "healthcheck" in services[name], name
    assert services["worker"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "app-password"
    assert "ports" not in services["worker"], "workers scale with --scale, so they publish no ports"


@pytest.mark.process
@needs_compose
def test_compose_refuses_to_start_without_secrets():
    result = compose_config()
    assert result.returncode != 0
    assert "MINIO_ROOT_USER" in result.stderr
    for name in SECRETS:  # each one is required on its own
        result = compose_config(**{k: v for k, v in SECRETS.items() if k != name})
        assert result.returncode != 0 and name in result.stderr, (name, result.stderr)


@needs_compose
def test_compose_publishes_only_the_proxy_port():
    services = compose_services()
    # Profile metrics' Prometheus publishes its UI on this machine only (its own test, below).
    published = {
        name: _ports(service) for name, service in services.items() if service.get("ports") and name != "prometheus"
    }
    assert published == {"proxy": [("127.0.0.1", "8000", "8000")]}, "only the proxy, on this machine by default"
    assert "ports" not in services["minio"], "MinIO's API and console are reached through the proxy or not at all"
    # BIND and PORT move the proxy and nothing else.
    wide = compose_services(BIND="0.0.0.0", PORT="8123")
    assert {name for name, service in wide.items() if service.get("ports")} == {"proxy", "prometheus"}
    assert _ports(wide["prometheus"])[0][0] == "127.0.0.1", "BIND moves the proxy only"
    assert _ports(wide["proxy"]) == [("0.0.0.0", "8123", "8000")]
    # Browsers get presigned URLs on the proxy's own address, by default the published one.
    for name in APP_SERVICES:
        assert services[name]["environment"]["PUBLIC_S3_ENDPOINT_URL"] == "http://localhost:8000", name
    public = compose_services(PUBLIC_S3_ENDPOINT_URL="https://stories.example.com")
    assert public["web"]["environment"]["PUBLIC_S3_ENDPOINT_URL"] == "https://stories.example.com"


@needs_compose
def test_app_services_use_their_own_minio_user_not_root():
    services = compose_services()
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == "story-app" and env["AWS_SECRET_ACCESS_KEY"] == "app-password", name
        assert not any(key.startswith("MINIO_ROOT") for key in env), name
        assert not {"admin", "root-password"} & {str(value) for value in env.values()}, name
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000" and env["STORAGE_URL"] == "s3://narrator/jobs", name
    # Root's credentials go to MinIO itself and to the one-shot that sets it up, nowhere else.
    holders = {
        name
        for name, service in services.items()
        if "root-password" in {str(value) for value in (service.get("environment") or {}).values()}
    }
    assert holders == {"minio", "create-bucket"}


@needs_compose
def test_webhooks_service_runs_the_webhooks_queue_on_the_light_image():
    services = compose_services()
    webhooks = services["webhooks"]
    assert webhooks["build"]["dockerfile"] == "Dockerfile.web", "no torch: the web image"
    assert webhooks["command"] == [
        "celery",
        "-A",
        "shared.webhooks.worker",
        "worker",
        "-Q",
        "webhooks",
        "--pool",
        "threads",
        "--concurrency",
        "8",
        "--loglevel",
        "INFO",
    ]
    assert "redis" in webhooks["depends_on"] and webhooks["restart"] == "unless-stopped"
    assert not webhooks.get("ports") and not webhooks.get("expose")
    assert "deploy" not in webhooks, "no GPU"
    # The app environment (x-app-env) plus what signing webhooks needs, all as web has them; the
    # session key stays with web, and GPU workers get neither secret.
    env, web_env = webhooks["environment"], services["web"]["environment"]
    assert all(env[k] == web_env[k] for k in env), "the same settings as web's"
    assert {"REDIS_URL", "STORAGE_URL", "AWS_ACCESS_KEY_ID", "PUBLIC_BASE_URL", "WEBHOOK_SECRET"} <= set(env)
    assert "SECRET_KEY" not in env and web_env["SECRET_KEY"] == "session-signing-key"
    assert not {"SECRET_KEY", "WEBHOOK_SECRET"} & set(services["worker"]["environment"])
    hooks = compose_services(WEBHOOK_SECRET="whsec_abc", PUBLIC_BASE_URL="https://stories.example.com")
    assert (
        hooks["webhooks"]["environment"]["WEBHOOK_SECRET"]
        == hooks["web"]["environment"]["WEBHOOK_SECRET"]
        == "whsec_abc"
    )
    assert hooks["webhooks"]["environment"]["PUBLIC_BASE_URL"] == "https://stories.example.com"
    # The web image's own health check asks gunicorn on :8000, which does not run in this container.
    check = " ".join(webhooks["healthcheck"]["test"])
    assert ":8000" not in check and "redis_client(get_settings()" in check, (
        "REDIS_URL's server or the Sentinels' master"
    )


# --- profile sentinel: a replica and three Sentinels; the app asks them for the master ---------------

SENTINEL_SERVICES = {"redis-replica", "sentinel1", "sentinel2", "sentinel3"}
SENTINEL_ENV = {
    "REDIS_SENTINELS": "sentinel1:26379,sentinel2:26379,sentinel3:26379",
    "REDIS_MIN_REPLICAS_TO_WRITE": "1",
}


@pytest.mark.process
@needs_compose
def test_compose_profile_sentinel_adds_a_replica_and_three_sentinels():
    listed = subprocess.run(
        [COMPOSE, "config", "--profiles"],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and listed.stdout.split() == ["metrics", "sentinel"], listed.stderr
    services = compose_services("--profile", "sentinel", **SENTINEL_ENV)
    # Only the new services belong to the profile: a plain `up` runs what it ran before.
    assert {
        name for name, service in services.items() if "sentinel" in service.get("profiles", [])
    } == SENTINEL_SERVICES
    assert all(services[name]["profiles"] == ["sentinel"] for name in SENTINEL_SERVICES)
    assert not any(services[name].get("ports") for name in SENTINEL_SERVICES), "nothing published"
    # Each Sentinel: its own name and volume (it rewrites its config file), quorum 2 of 3 on `redis`.
    volumes = set()
    for name in ("sentinel1", "sentinel2", "sentinel3"):
        sentinel = services[name]
        script = _unescape(sentinel["command"][0])
        assert sentinel["environment"]["SELF"] == name and sentinel["environment"]["REDIS_MASTER_NAME"] == "mymaster"
        assert "sentinel monitor $REDIS_MASTER_NAME redis 6379 2" in script and "--sentinel" in script
        assert "sentinel resolve-hostnames yes" in script and "sentinel announce-hostnames yes" in script
        assert 'if [ ! -s "$conf" ]' in script, "the learned state survives a restart"
        volumes |= {source for source, target, _ in _mounts(sentinel) if target == "/data"}
        assert "healthcheck" in sentinel and sentinel["restart"] == "unless-stopped"
    assert len(volumes) == 3
    replica = services["redis-replica"]
    assert replica["command"] == services["redis"]["command"], "one start script for both data nodes"
    assert (
        replica["environment"]["DEFAULT_MASTER"] == "redis 6379" and replica["environment"]["SELF"] == "redis-replica"
    )
    assert {name: services[name]["environment"]["MIN_REPLICAS"] for name in ("redis", "redis-replica")} == {
        "redis": "1",
        "redis-replica": "1",
    }
    # Every app service finds the master through the Sentinels; REDIS_URL still gives the database.
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["REDIS_SENTINELS"] == SENTINEL_ENV["REDIS_SENTINELS"] and env["REDIS_MASTER_NAME"] == "mymaster", (
            name
        )
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
    # Without the profile's settings: no Sentinels, no minimum of replicas.
    plain = compose_services()
    assert all(plain[name]["environment"]["REDIS_SENTINELS"] == "" for name in APP_SERVICES)
    assert plain["redis"]["environment"]["MIN_REPLICAS"] == "0"


@needs_compose
def test_compose_profile_metrics_runs_prometheus_scraping_web_and_every_worker():
    import yaml

    services = compose_services("--profile", "metrics")
    prometheus = services["prometheus"]
    assert {name for name, service in services.items() if "metrics" in service.get("profiles", [])} == {"prometheus"}
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"]), "pinned"
    assert _ports(prometheus) == [("127.0.0.1", "9090", "9090")], "no login: this machine only"
    assert "/etc/prometheus/prometheus.yml" in {target for _, target, _ in _mounts(prometheus)}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "healthcheck" in prometheus and prometheus["restart"] == "unless-stopped"
    # The workers serve their metrics on the compose network only; every scaled one on the same port.
    worker = services["worker"]["environment"]
    assert worker["WORKER_METRICS_BIND"] == "0.0.0.0" and "ports" not in services["worker"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"web", "worker"}
    for name, port in (("web", 8000), ("worker", int(worker["WORKER_METRICS_PORT"]))):
        (found,) = jobs[name]["dns_sd_configs"]  # every container of the service, by its name
        assert found["names"] == [name] and found["type"] == "A" and found["port"] == port, name
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"


FAKE_REDIS_CLI = r"""#!/bin/sh
# A stand-in for redis-cli: `-h HOST ...` answers what FAKE_SENTINELS says for HOST (host=answer;...).
host="$2"
echo "$*" >> "$FAKE_STATE/cli-calls"
answer="$(printf '%s' "$FAKE_SENTINELS" | tr ';' '\n' | sed -n "s/^$host=//p")"
[ -n "$answer" ] || { echo "Could not connect to Redis at $host:26379: Name does not resolve" >&2; exit 1; }
[ "$answer" = "nil" ] && { echo; exit 0; }
printf '%s\n' $answer
"""

FAKE_SERVER = r"""#!/bin/sh
printf '%s\n' "$@" > "$FAKE_STATE/server-args"
"""


def _start_redis_node(tmp_path: Path, service: str, sentinels: str) -> list[str]:
    """Run a data node's start script (as compose gives it) with a stand-in redis-cli and redis-server;
    returns the redis-server arguments it chose."""
    node = compose_services("--profile", "sentinel", **SENTINEL_ENV)[service]
    assert node["entrypoint"] == ["/bin/sh", "-c"]
    bin_dir, state = tmp_path / "bin", tmp_path / f"state-{service}-{abs(hash(sentinels))}"
    bin_dir.mkdir(exist_ok=True)
    state.mkdir()
    for name, text in (("redis-cli", FAKE_REDIS_CLI), ("redis-server", FAKE_SERVER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {
        **{k: str(v) for k, v in node["environment"].items()},
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_STATE": str(state),
        "FAKE_SENTINELS": sentinels,
    }
    result = subprocess.run(
        ["/bin/sh", "-c", _unescape(node["command"][0])], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return (state / "server-args").read_text().split()


@pytest.mark.process
@needs_compose
def test_redis_nodes_follow_the_master_the_sentinels_name(tmp_path):
    base = ["--appendonly", "yes", "--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"]
    # First start (or no profile): no Sentinel answers; `redis` is the master, the replica follows it.
    alone = _start_redis_node(tmp_path, "redis", "")
    assert "--replicaof" not in alone and all(arg in alone for arg in base)
    assert alone[alone.index("--replica-announce-ip") + 1] == "redis"
    first = _start_redis_node(tmp_path, "redis-replica", "")
    assert first[first.index("--replicaof") :][:3] == ["--replicaof", "redis", "6379"]
    assert first[first.index("--replica-announce-ip") + 1] == "redis-replica"
    # After a failover the Sentinels name redis-replica: the old master restarts as its replica, and
    # the new master restarts as a master (not as a replica of a replica).
    failed_over = "sentinel1=redis-replica 6379"
    old = _start_redis_node(tmp_path, "redis", failed_over)
    assert old[old.index("--replicaof") :][:3] == ["--replicaof", "redis-replica", "6379"]
    assert "--replicaof" not in _start_redis_node(tmp_path, "redis-replica", failed_over)
    # A Sentinel that is down or knows no master is skipped for the next one.
    skipped = _start_redis_node(tmp_path, "redis", "sentinel2=nil;sentinel3=redis-replica 6379")
    assert skipped[skipped.index("--replicaof") :][:3] == ["--replicaof", "redis-replica", "6379"]


@pytest.mark.process
@needs_compose
@requires_tool(shutil.which("redis-server") is not None, "redis-server")
def test_compose_sentinel_and_redis_configs_are_ones_redis_accepts(tmp_path):
    """The Sentinel config the profile writes, and the data nodes' arguments, started for real on
    loopback (the service names replaced by 127.0.0.1 and free ports)."""
    import redis

    from tests.support.net import free_port, wait_for_port

    services = compose_services("--profile", "sentinel", **SENTINEL_ENV)
    args = _start_redis_node(tmp_path, "redis", "")
    master_port, sentinel_port = free_port(), free_port()
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("redis-server"),
                    *args,
                    "--port",
                    str(master_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(tmp_path),
                    "--replica-announce-ip",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_port(master_port, timeout=10)
        master = redis.Redis(port=master_port)
        assert master.config_get("min-replicas-to-write") == {"min-replicas-to-write": "1"}
        # The Sentinel's first start writes its config; run the script with /data moved to tmp_path.
        script = _unescape(services["sentinel1"]["command"][0]).replace("/data/", f"{tmp_path}/")
        script = script.replace(" redis 6379 2", f" 127.0.0.1 {master_port} 2").replace(
            "port 26379", f"port {sentinel_port}"
        )
        env = {"PATH": os.environ["PATH"], "SELF": "127.0.0.1", "REDIS_MASTER_NAME": "mymaster"}
        procs.append(
            subprocess.Popen(["/bin/sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_for_port(sentinel_port, timeout=10)
        sentinel = redis.Redis(port=sentinel_port, decode_responses=True)
        assert sentinel.sentinel_get_master_addr_by_name("mymaster") == ("127.0.0.1", master_port)
        assert sentinel.sentinel_master("mymaster")["quorum"] == 2
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


# --- create-bucket: the app's MinIO user and its policy, run with a stand-in `mc` -------------------

FAKE_MC = r"""#!/bin/sh
# A stand-in for MinIO's client: records each call, keeps a little state like the server would.
state="$FAKE_MC_STATE"
echo "$*" >> "$state/calls"
case "$*" in
  "ilm rule ls "*) [ -f "$state/ilm" ] && { echo "ID | Expiration"; exit 0; }; echo "no lifecycle" >&2; exit 1 ;;
  "ilm rule add "*) touch "$state/ilm" ;;
  "admin policy create "*) cp "$6" "$state/policy-$5.json" ;;
  "admin policy attach "*)
    refused="mc: <ERROR> Unable to make user/group policy association."
    [ -n "${FAKE_MC_ATTACH_FAILS:-}" ] && { echo "$refused $FAKE_MC_ATTACH_FAILS" >&2; exit 1; }
    [ -f "$state/attached" ] && { echo "$refused The specified policy change is already in effect." >&2; exit 1; }
    touch "$state/attached" ;;
esac
exit 0
"""


def _run_create_bucket(tmp_path: Path, env: dict, state: Path) -> subprocess.CompletedProcess:
    services = compose_services()
    service = services["create-bucket"]
    assert service["entrypoint"] == ["/bin/sh", "-c"] and "/minio/mc:" in service["image"]
    script = _unescape(service["command"][0]).replace("/tmp/app-policy.json", str(tmp_path / "policy.json"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(stat.S_IRWXU)
    state.mkdir(exist_ok=True)
    # Only the service's own environment, and a PATH without grep or sed (the mc image has neither).
    run_env = {
        **{k: str(v) for k, v in service["environment"].items()},
        **env,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_MC_STATE": str(state),
    }
    return subprocess.run(["/bin/sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=30)


@pytest.mark.process
@needs_compose
def test_create_bucket_makes_the_app_user_with_a_policy_on_its_bucket_alone(tmp_path):
    state = tmp_path / "state"
    first = _run_create_bucket(tmp_path, {}, state)
    assert first.returncode == 0, first.stderr
    calls = (state / "calls").read_text().splitlines()
    assert "alias set local http://minio:9000 admin root-password" in calls
    assert "mb --ignore-existing local/narrator" in calls
    assert "ilm rule add --expire-days 8 local/narrator" in calls
    assert "admin user add local story-app app-password" in calls
    assert "admin policy attach local narrator-app --user story-app" in calls
    created = [c for c in calls if c.startswith("admin policy create local narrator-app ")]
    assert len(created) == 1
    assert calls.index(created[0]) < calls.index("admin policy attach local narrator-app --user story-app")
    policy = json.loads((state / "policy-narrator-app.json").read_text())
    allowed = {
        (action, resource)
        for statement in policy["Statement"]
        if statement["Effect"] == "Allow"
        for action in statement["Action"]
        for resource in statement["Resource"]
    }
    assert allowed == {
        ("s3:GetBucketLocation", "arn:aws:s3:::narrator"),
        ("s3:ListBucket", "arn:aws:s3:::narrator"),
        ("s3:GetObject", "arn:aws:s3:::narrator/*"),
        ("s3:PutObject", "arn:aws:s3:::narrator/*"),
        ("s3:DeleteObject", "arn:aws:s3:::narrator/*"),
    }
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])

    # Every `up` runs it again: the rule is not added twice, an attachment already in effect is fine.
    second = _run_create_bucket(tmp_path, {}, state)
    assert second.returncode == 0, second.stderr
    calls = (state / "calls").read_text().splitlines()
    assert calls.count("ilm rule add --expire-days 8 local/narrator") == 1
    assert calls.count("admin user add local story-app app-password") == 2, "the secret is set again"
    assert calls.count("admin policy attach local narrator-app --user story-app") == 2


@pytest.mark.process
@needs_compose
def test_create_bucket_fails_on_real_errors(tmp_path):
    broken = _run_create_bucket(
        tmp_path, {"FAKE_MC_ATTACH_FAILS": "The specified user does not exist."}, tmp_path / "a"
    )
    assert broken.returncode != 0 and "does not exist" in broken.stderr
    # Refused before MinIO is touched: the app as root, or a bucket path that hides the app's own.
    same_as_root = _run_create_bucket(tmp_path, {"S3_ACCESS_KEY": "admin"}, tmp_path / "b")
    assert same_as_root.returncode != 0 and "MINIO_ROOT_USER" in same_as_root.stderr
    assert not (tmp_path / "b" / "calls").exists()
    hides_app = _run_create_bucket(tmp_path, {"BUCKET": "api"}, tmp_path / "c")
    assert hides_app.returncode != 0 and "BUCKET=api" in hides_app.stderr
    assert not (tmp_path / "c" / "calls").exists()


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
    services = compose_services()
    proxy, web = services["proxy"], services["web"]
    assert proxy["image"].startswith("nginx:")
    assert not web.get("ports"), "web publishes no port: clients go through the proxy"
    assert str(web["environment"]["PROXY_HOPS"]) == "1"
    # By default everything listens on this machine only.
    assert _ports(proxy) == [("127.0.0.1", "8000", "8000")]
    assert not services["minio"].get("ports")
    # The nginx image's entrypoint writes /etc/nginx/nginx.conf from the template, filling in BUCKET only.
    assert any(
        Path(source) == ROOT / "deploy" / "nginx.conf" and target == "/etc/nginx/templates/nginx.conf.template" and ro
        for source, target, ro in _mounts(proxy)
    )
    env = proxy["environment"]
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert _unescape(env["NGINX_ENVSUBST_FILTER"]) == "^BUCKET$"
    assert env["BUCKET"] == services["create-bucket"]["environment"]["BUCKET"] == "narrator"
    assert {"web", "minio"} <= set(proxy["depends_on"]) and "healthcheck" in proxy
    # Another bucket moves all three together.
    other = compose_services(BUCKET="stories")
    assert other["proxy"]["environment"]["BUCKET"] == other["create-bucket"]["environment"]["BUCKET"] == "stories"
    assert other["web"]["environment"]["STORAGE_URL"] == "s3://stories/jobs"


def _nginx_text(bucket: str = "narrator") -> str:
    """deploy/nginx.conf as the nginx image's entrypoint renders it (envsubst of BUCKET alone),
    without comments."""
    text = re.sub(r"#[^\n]*", "", (ROOT / "deploy" / "nginx.conf").read_text())
    return re.sub(r"\$(BUCKET\b|\{BUCKET\})", bucket, text)


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for statement in re.findall(r"([a-z_0-9]+)\s+([^;{}]*);", text):
        found.setdefault(statement[0], []).append(statement[1].strip())
    return found


def _nginx_directives() -> dict[str, list[str]]:
    return _directives(_nginx_text())


def _nginx_locations(text: str) -> dict[str, str]:
    """Each location's argument -> its body, nested blocks included."""
    found = {}
    for match in re.finditer(r"\blocation\s+([^{;]+?)\s*\{", text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found[match.group(1)] = text[match.end() : i - 1]
    return found


def test_nginx_passes_only_presigned_reads_of_the_bucket_to_minio():
    raw = re.sub(r"#[^\n]*", "", (ROOT / "deploy" / "nginx.conf").read_text())
    # The template names no environment variable but BUCKET (nginx's own variables are lowercase).
    assert set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", raw)) == {"BUCKET"}
    text = _nginx_text()
    locations = _nginx_locations(text)
    bucket = locations["^~ /narrator/"]
    # MinIO is one upstream, used by that location alone; no other of its ports or paths is proxied.
    assert re.findall(r"\bserver\s+(minio:\d+)", text) == ["minio:9000"]
    assert [name for name, body in locations.items() if "minio" in body] == ["^~ /narrator/"]
    assert _directives(bucket)["proxy_pass"] == ["http://minio"], "no URI part: the request line passes unchanged"
    assert not re.search(r":9001\b", text), "never the console"
    # GET (and so HEAD) only; anything else is refused at the proxy.
    limit = re.search(r"limit_except\s+([A-Z ]+?)\s*\{([^}]*)\}", bucket)
    assert limit and limit.group(1).split() == ["GET"] and _directives(limit.group(2)) == {"deny": ["all"]}
    # Only query-string-signed (presigned) requests, checked for before anything is proxied.
    signed = re.search(r'if\s*\(\$args\s*!~\*?\s*"([^"]+)"\s*\)\s*\{\s*return\s+403;\s*\}', bucket)
    assert signed and re.search(signed.group(1), "response-content-type=audio&X-Amz-Signature=ab", re.I)
    assert not re.search(signed.group(1), "list-type=2&prefix=jobs", re.I)
    # The signature was made for the Host the browser sends: it must reach MinIO as it is.
    headers = {v.split(None, 1)[0].lower(): v.split(None, 1)[1] for v in _directives(bucket)["proxy_set_header"]}
    assert headers["host"] == "$http_host"
    assert headers["authorization"] == '""' and headers["cookie"] == '""', "no other credentials pass"
    # Everything else goes to the web app.
    assert set(_directives(locations["/"])["proxy_pass"]) == {"http://web"}  # "/" and its "= /jobs"
    assert set(locations) == {"/", "^~ /narrator/", "@too_large", "= /metrics", "= /jobs"}
    # The form's album post (20 photos) alone may be larger; it inherits the rest from "/".
    albums = _directives(locations["= /jobs"])
    assert "= /jobs" in locations["/"] and albums["proxy_pass"] == ["http://web"]
    from web.pages.albums import MAX_PHOTOS, PART_OVERHEAD

    assert _size_bytes(albums["client_max_body_size"][0]) >= MAX_PHOTOS * (10 * 1024 * 1024 + PART_OVERHEAD)
    # Prometheus reaches web:8000 directly; the public gets no metrics.
    assert _directives(locations["= /metrics"]) == {"return": ["404"]}
    assert "^~ /stories/" in _nginx_locations(_nginx_text("stories"))


def _size_bytes(value: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
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
    for name in (
        "client_header_timeout",
        "client_body_timeout",
        "send_timeout",
        "proxy_connect_timeout",
        "proxy_send_timeout",
        "proxy_read_timeout",
    ):
        assert name in d, name
    # nginx gives up on gunicorn later than a submit can take (S3 timeouts: about 15 s).
    assert int(d["proxy_read_timeout"][0].rstrip("s")) >= 30
    assert d["server"] == ["web:8000", "minio:9000"] and d["proxy_pass"] == ["http://web", "http://web", "http://minio"]
    app = _directives(_nginx_locations(_nginx_text())["/"])
    headers = {value.split(None, 1)[0]: value.split(None, 1)[1] for value in app["proxy_set_header"]}
    assert headers["X-Forwarded-Proto"] == "$scheme" and headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Prefix"] == '""', "a client's own X-Forwarded-Prefix must not pass"
    # The upstream keeps connections no longer than gunicorn does.
    conf = _gunicorn_conf({})
    assert int(d["keepalive_timeout"][-1].rstrip("s")) < conf["keepalive"]


def _gunicorn_conf(env: dict) -> dict:
    """The settings web/gunicorn_conf.py gives under `env`, as gunicorn itself reads them."""
    code = (
        "import json, sys; from gunicorn.app.base import Application\n"
        "class A(Application):\n"
        "    def init(self, *a): return None\n"
        "    def load(self): return None\n"
        "sys.argv = ['gunicorn', '-c', 'web/gunicorn_conf.py', 'x:y']\n"
        "app = A()\n"
        "print(json.dumps({k: getattr(app.cfg, k) for k in ('bind', 'worker_class_str', 'workers', "
        "'worker_connections', 'timeout', 'graceful_timeout', 'keepalive', 'limit_request_line', "
        "'limit_request_fields', 'limit_request_field_size', 'preload_app')}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("BIND", "PORT", "WEB_CONCURRENCY")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
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
