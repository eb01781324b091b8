"""The client is tested against the real service: web app, Redis, a Celery worker, S3 over HTTP (moto),
so downloads follow real redirects to presigned storage URLs on another host."""

import pytest


@pytest.fixture
def storage_url(s3_env) -> str:
    return s3_env
