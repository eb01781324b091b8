"""The one typed settings object, read from the environment (and an optional .env file).

Both the web front end and the GPU workers read it; nothing here imports torch.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_storage_url() -> str:
    # The embedded default serves one machine: ./data next to where the process starts.
    return "file://" + os.path.abspath("data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Queue and job records
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel (shared/redis_conn.py): comma-separated host:port of the Sentinels; when set, every
    # client finds the current master of REDIS_MASTER_NAME through them, and REDIS_URL carries only
    # the database number and the password (its host is not used). Empty: REDIS_URL's host.
    redis_sentinels: str = ""
    redis_master_name: str = "mymaster"
    job_ttl_hours: float = Field(168, gt=0)
    job_time_limit: int = Field(600, gt=0, description="seconds one batch may run before its jobs are failed")
    # A worker fills its batch with up to this many queued jobs: on a GPU, one batched forward
    # pass costs little more than a single one. 1 turns batching off. Unset: 128 on a GPU, 8 on a CPU
    # (worker/engine/pipeline.py, Engine.batch_size).
    worker_batch_size: int | None = Field(None, ge=1, le=256)
    # A job with a `seed` whose photo, words, style and models match an earlier job's succeeds at once
    # from that result (shared/result_cache.py); entries live JOB_TTL_HOURS.
    result_cache: bool = True

    # Recovery: a worker renews a short lease on the jobs it runs every HEARTBEAT_SECONDS; a job
    # whose lease lapses (its worker was killed, or its host vanished) goes back to the queue.
    heartbeat_seconds: float = Field(5, gt=0, le=60)
    lease_seconds: float = Field(20, gt=0, le=600)
    # A death in a batch does not count: each of its jobs runs alone next, where a death is its own.
    max_attempts: int = Field(3, ge=1, le=20, description="runs of a job alone that may end with its worker dying")
    worker_stop_grace: float = Field(60, ge=0, description="seconds a stopping worker may finish its batch")
    # How long a worker keeps retrying storage during an outage before it fails the job.
    storage_retry_seconds: float = Field(120, ge=0)

    # Storage: s3://bucket/prefix or file:///abs/path
    storage_url: str = Field(default_factory=_default_storage_url)
    audio_url_ttl: int = Field(3600, gt=0)
    # Clients may reach the S3 server at another address than the services do (compose: minio:9000
    # inside, localhost:9000 outside); presigned URLs must be signed for the address clients use.
    public_s3_endpoint_url: str | None = None
    # Every S3 call (shared/storage_s3.py) fails fast when storage hangs (a blackholed address, a
    # wedged server): a web request must get its 503 within seconds, and the worker's own retries
    # (STORAGE_RETRY_SECONDS) ride out longer outages. The read timeout bounds each wait for the next
    # bytes, not a whole transfer, so large objects still move. Worst case per call with the defaults:
    # 2 attempts x (3 s connect, or a PUT's 1 s wait for "100 Continue" plus a 5 s read) + at most
    # 1 s backoff, about 13 s. S3_MAX_ATTEMPTS counts the first try: 2 = one retry.
    s3_connect_timeout: float = Field(3, gt=0)
    s3_read_timeout: float = Field(5, gt=0)
    s3_max_attempts: int = Field(2, ge=1)

    # Behind a reverse proxy (TLS terminator, load balancer): how many proxies' X-Forwarded-*
    # headers to trust, so absolute URLs (audio_url, Location) use the client's scheme and host.
    proxy_hops: int = Field(0, ge=0, le=5)

    # Owners (web): API keys, browser sessions, limits per owner
    require_api_key: bool = False  # true: API calls without `Authorization: Bearer KEY` are 401
    # Signs the browser-session cookie. Required in production (`make up` writes one to .env).
    secret_key: str | None = None
    submit_rate_limit: str = "2/second;60/minute"  # per key, else per session, else per client address
    read_rate_limit: str = "20/second"
    # Every submit without an API key from one client address (an IPv6 client's /64) also counts
    # here: a fresh session per post (or none) cannot get around the per-owner limits.
    submit_address_rate_limit: str = "5/second;200/minute"
    max_queued_per_owner: int = Field(1000, ge=1)
    # Absolute URLs (audio_url, Location) come from here, or from a trusted proxy (PROXY_HOPS), never
    # from a raw Host header.
    public_base_url: str | None = None
    # Host names the web app answers to (a request naming another is a 400), comma-separated, "*"
    # for any. Empty: PUBLIC_BASE_URL's host, else BIND's address; loopback names always. A page
    # must not trust a Host it did not expect (DNS rebinding turns a foreign name into this app).
    trusted_hosts: str = ""
    bind: str = "127.0.0.1"  # BIND: the address the web app listens on (web/gunicorn_conf.py)

    # Webhooks: POSTed when a job ends, signed per Standard Webhooks
    webhook_secret: str | None = None  # whsec_...: signs the webhooks of ownerless jobs
    webhook_allow_private: bool = False  # allow http:// and private/loopback addresses (tests, intranets)
    # Delivery (shared/webhooks/delivery.py): attempts per job and event; the first retry's wait,
    # doubled after each failure; the longest wait, which stays below the Redis broker's one-hour
    # visibility timeout so a waiting retry is never handed out twice; one attempt's time, connect to answer.
    webhook_max_attempts: int = Field(12, ge=1, le=50)
    webhook_retry_seconds: float = Field(5, gt=0)
    webhook_retry_max_seconds: float = Field(1800, gt=0, le=3000)
    webhook_timeout: float = Field(10, gt=0, le=60)

    # Uploads
    max_upload_mb: float = Field(10, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0, description="larger images are refused (decompression bombs)")

    # Models: a hub id or a local folder each
    caption_model: str = "Salesforce/blip-image-captioning-base"
    story_model: str = "Qwen/Qwen2.5-1.5B-Instruct"
    story_adapter: str | None = None  # local folder or s3://bucket/prefix
    # Story styles (shared/styles.py): comma-separated name=location pairs, each location as
    # STORY_ADAPTER takes it; one worker serves them all, a job picks one (`style`). Checked at
    # start-up (worker model load, create_app), so a typo is a clear error there, not here.
    story_styles: str = ""
    story_default_style: str | None = None  # a STORY_STYLES name; unset: the first listed
    speech_model: str = "facebook/mms-tts-eng"
    # Narration languages (shared/languages.py): comma-separated code=location pairs, each code an
    # ISO 639-3 code as MMS names its checkpoints (eng, deu, hin), each location an MMS-TTS checkpoint
    # as SPEECH_MODEL takes it; a job picks one (`language`). Unset: English only, from SPEECH_MODEL.
    languages: str = ""
    default_language: str | None = None  # a LANGUAGES code; unset: the first listed
    # Voices a worker keeps loaded (least recently used goes first); each loads on its first job.
    max_voices: int = Field(4, ge=1, le=64)
    model_cache_dir: str = Field(default_factory=lambda: os.path.abspath(".cache/adapters"))

    # Hardware
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantize: Literal["none", "8bit", "4bit"] = "none"
    # The story model's static KV cache, which lets its decoding step compile (worker/engine/story.py):
    # auto turns it on on a GPU, where it is several times faster, and off on a CPU, where it is not.
    static_cache: Literal["auto", "on", "off"] = "auto"
    # A batch's finishing (uploads, records, webhooks) runs on a background thread while the next
    # batch runs its stages (worker/finisher.py). Encoding its MP3s goes there too when this is on:
    # auto turns it on on a GPU, which it keeps busy, and off on a CPU, where encoding beside the
    # next batch only competes with it for the same cores (the task encodes before handing over).
    encode_in_background: Literal["auto", "on", "off"] = "auto"

    # Metrics (Prometheus): web/middleware/metrics.py serves GET /metrics; METRICS_TOKEN, when set, makes a scrape
    # send `Authorization: Bearer <token>`. A worker serves its own on WORKER_METRICS_PORT (None: off);
    # one worker process per GPU on one host needs one port each (9101, 9102, ...).
    metrics_token: str | None = None
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)
    worker_metrics_bind: str = "127.0.0.1"  # 0.0.0.0 where Prometheus scrapes from another host or container

    # Story defaults
    story_words: int = Field(40, ge=10, le=200)  # the same range the API accepts
    story_temperature: float = Field(0.8, gt=0, le=2)
    story_top_p: float = Field(0.9, gt=0, le=1)

    @field_validator("story_adapter", "secret_key", "public_base_url", "webhook_secret", mode="before")
    @classmethod
    def _empty_adapter_is_none(cls, value):
        return value or None

    @field_validator("worker_metrics_port", "worker_batch_size", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("DEVICE must be auto, cpu, cuda or cuda:N")

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        items = [item.strip() for item in (value or "").split(",") if item.strip()]
        for item in items:
            host, sep, port = item.rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"REDIS_SENTINELS must be comma-separated host:port pairs, not {item!r}")
        return ",".join(items)

    @field_validator("redis_master_name")
    @classmethod
    def _check_master_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("REDIS_MASTER_NAME must name the master the Sentinels monitor")
        return value.strip()

    @field_validator("lease_seconds")
    @classmethod
    def _lease_outlives_heartbeats(cls, value: float, info) -> float:
        beat = info.data.get("heartbeat_seconds", 5)
        if value < 2 * beat:  # one late heartbeat must not cost a live worker its jobs
            raise ValueError(f"LEASE_SECONDS must be at least twice HEARTBEAT_SECONDS ({beat:g})")
        return value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def job_ttl_seconds(self) -> int:
        return int(self.job_ttl_hours * 3600)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
