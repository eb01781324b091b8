"""The product as a user meets it: real headless Chromium, the web app, a real Celery worker,
Redis, moto's S3 server and the tiny models. Nothing is played by the test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from tests.support.browser import until
from tests.support.env import requires_tool

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [requires_tool(Path(CHROMIUM).exists(), "Debian's chromium"), pytest.mark.process]  # Chromium and a worker


@pytest.mark.parametrize("storage_url", ["s3"], indirect=True)
def test_upload_a_photo_and_listen_to_its_story(celery_worker_process, web_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _, base = web_server
    import numpy as np

    # A photo of real size (about half a megabyte of JPEG), not a few hundred bytes.
    photo = tmp_path / "garden.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(
        photo, "JPEG", quality=92
    )
    assert photo.stat().st_size > 400_000

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(base + "/")
        page.get_by_label("Photo").set_input_files(photo)
        page.get_by_role("button", name="Make my story").click()
        page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{22}$"))

        expect(page.locator("#status")).to_have_text("Done: your story is ready.", timeout=90_000)
        assert page.locator("#caption").text_content().strip()
        assert page.locator("#story").text_content().strip()
        # The player's source is a presigned S3 URL behind a redirect; the browser must decode it.
        until(page, "document.getElementById('audio').readyState >= 1", 20)
        assert page.evaluate("document.getElementById('audio').duration") > 0
        assert errors == []
        browser.close()
