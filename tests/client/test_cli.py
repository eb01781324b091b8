"""`python -m narrator_client narrate`: a real photo to a real MP3 through the running service."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from narrator_client import Client
from tests.support.audio import is_mp3
from tests.support.env import ROOT
from tests.support.keys import create_api_key
from tests.support.photos import photo

pytestmark = pytest.mark.process  # the client CLI


def narrate(*args: str, env: dict | None = None, stderr=subprocess.PIPE, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "narrator_client", "narrate", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=timeout,
    )


def test_narrate_writes_the_mp3_prints_the_story_and_shows_the_stages(
    service_env, web_server, celery_worker_process, tmp_path
):
    _, base = web_server
    (tmp_path / "photo.jpg").write_bytes(photo())
    key = create_api_key(service_env, "cli")
    # The progress bar goes to a terminal (stderr here is a pseudo-terminal); the story to stdout.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    seen = bytearray()
    reader = threading.Thread(target=_drain, args=(leader, seen), daemon=True)
    reader.start()
    result = narrate(
        str(tmp_path / "photo.jpg"),
        "-o",
        str(tmp_path / "story.mp3"),
        "--words",
        "12",
        env={"NARRATOR_URL": base, "NARRATOR_API_KEY": key},
        stderr=follower,
    )
    os.close(follower)
    reader.join(timeout=5)
    assert result.returncode == 0
    assert is_mp3((tmp_path / "story.mp3").read_bytes())
    job = next(Client(base, api_key=key).jobs())  # the key's job, so the key was sent
    assert result.stdout.strip() == job.story.strip() and job.status == "succeeded"
    shown = seen.decode(errors="replace")
    assert "5/5 done" in shown and "saved" in shown, shown

    as_json = narrate(
        str(tmp_path / "photo.jpg"),
        "--url",
        base,
        "--json",
        "--seed",
        "3",
        "--language",
        "eng",
        "-o",
        str(tmp_path / "again.mp3"),
    )
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    assert printed["status"] == "succeeded" and printed["seed"] == 3 and printed["output"].endswith("again.mp3")
    assert printed["language"] == "eng"
    assert as_json.stderr == ""  # no bar for scripts


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        into.extend(chunk)


def test_exit_2_for_bad_input_and_1_for_a_job_that_ends_without_a_story(service_env, web_server, tmp_path):
    _, base = web_server
    missing = narrate(str(tmp_path / "nope.jpg"), "--url", base)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "photo.jpg").write_bytes(photo())
    nowhere = narrate(str(tmp_path / "photo.jpg"), "--url", base, "-o", str(tmp_path / "no" / "story.mp3"))
    assert nowhere.returncode == 2 and "cannot write there" in nowhere.stderr
    refused = narrate(str(tmp_path / "photo.jpg"), "--url", base, "--words", "5")
    assert refused.returncode == 2 and "invalid_words" in refused.stderr and "Traceback" not in refused.stderr
    assert "refused the photo" in refused.stderr
    no_language = narrate(str(tmp_path / "photo.jpg"), "--url", base, "--language", "xxx")
    assert no_language.returncode == 2 and "invalid_language" in no_language.stderr
    bad_key = narrate(str(tmp_path / "photo.jpg"), "--url", base, "--api-key", "nk_not-a-key")
    assert bad_key.returncode == 2 and "refused the API key" in bad_key.stderr and "invalid_api_key" in bad_key.stderr
    unreachable = narrate(str(tmp_path / "photo.jpg"), "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "no answer" in unreachable.stderr
    # No worker runs: the job waits until it is canceled, then the command exits 1.
    key = create_api_key(service_env, "cli-cancel")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "narrator_client",
            "narrate",
            str(tmp_path / "photo.jpg"),
            "--url",
            base,
            "--api-key",
            key,
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = Client(base, api_key=key)
    deadline = time.monotonic() + 30
    while not (jobs := list(client.jobs())):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    client.cancel(jobs[0].id)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "canceled" in err
    assert json.loads(out)["status"] == "canceled"
