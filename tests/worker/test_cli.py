"""`python -m worker narrate` as a user runs it: a real subprocess on the tiny models, offline."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydub import AudioSegment

from tests.support.photos import sample_images

pytestmark = pytest.mark.process  # each test runs the narrate CLI

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tiny_models_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUANTIZE", "DEVICE", "DTYPE", "STORY_ADAPTER")}
    env.update(
        HF_HUB_OFFLINE="1",
        CAPTION_MODEL=str(tiny_models_dir / "caption"),
        STORY_MODEL=str(tiny_models_dir / "story"),
        SPEECH_MODEL=str(tiny_models_dir / "speech"),
        DEVICE="cpu",
        STORY_WORDS="10",
    )
    return env


def run(env, *args, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *map(str, args)],
        cwd=ROOT,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(sample_images()["rgba.png"])
    return path


def test_narrate_prints_caption_and_story(env, photo, tmp_path):
    out = tmp_path / "nested" / "story.mp3"
    result = run(env, "narrate", photo, "-o", out, "--seed", 3, "--words", 10)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Caption: ") and len(lines[0]) > len("Caption: ")
    assert lines[1].startswith("Story: ")
    assert str(out) in lines[2]
    assert len(AudioSegment.from_file(io.BytesIO(out.read_bytes()), format="mp3")) > 0


def test_narrate_json(env, photo, tmp_path):
    out = tmp_path / "story.mp3"
    result = run(env, "narrate", photo, "-o", out, "--json", "--greedy")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout is exactly one JSON object, nothing else
    assert data["caption"] and data["story"] and data["audio_seconds"] > 0
    assert set(data["timings"]) == {"caption", "story", "speech", "encode"}
    assert data["output"] == str(out)
    audio = AudioSegment.from_file(io.BytesIO(out.read_bytes()), format="mp3")
    assert audio.frame_rate == data["sample_rate"]
    assert "Traceback" not in result.stderr


def write(tmp_path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def truncated_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("missing.jpg", None, "No such file"),
        ("notes.jpg", b"just some text, not a photo\n" * 10, "not a readable image"),
        ("empty.png", b"", "empty"),
        ("cut.jpg", truncated_jpeg(), "truncated"),
        ("folder.jpg", "folder", "cannot be read"),
    ],
)
def test_bad_input_exits_2_with_one_line(env, tmp_path, name, data, expected):
    if data == "folder":
        path = tmp_path / name
        path.mkdir()
    else:
        path = tmp_path / name if data is None else write(tmp_path, name, data)
    out = tmp_path / "out.mp3"
    result = run(env, "narrate", path, "-o", out)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"QUANTIZE": "4bit"}, "QUANTIZE=4bit needs a CUDA GPU"),
        ({"DEVICE": "cuda:7"}, "DEVICE=cuda:7"),
        ({"STORY_MODEL": "/nonexistent/story"}, "STORY_MODEL=/nonexistent/story"),
        ({"QUANTIZE": "3bit"}, "QUANTIZE"),
        ({"STORY_ADAPTER": "/nonexistent"}, "STORY_ADAPTER '/nonexistent': no such folder"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env, photo, tmp_path, extra, expected):
    result = run(env, "narrate", photo, "-o", tmp_path / "out.mp3", **extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def test_a_broken_adapter_is_a_one_line_error(env, photo, tmp_path):
    broken = tmp_path / "broken-adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({}))
    result = run(env, "narrate", photo, "-o", tmp_path / "out.mp3", STORY_ADAPTER=str(broken))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: STORY_ADAPTER")
