"""The offline tiny models: real classes, small, and byte-identical for the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("caption", "story", "speech")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    """A second seed-0 build, through the command line, to compare with the session's."""
    out = tmp_path_factory.mktemp("rebuilt")
    result = subprocess.run(
        [sys.executable, "-m", "worker.tiny_models", "--out", str(out), "--seed", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert all(str(out / part) in result.stdout for part in PARTS)
    return out


@pytest.mark.process
@pytest.mark.parametrize("part", PARTS)
def test_same_seed_gives_identical_files(tiny_models_dir, rebuilt, part):
    first, second = files(tiny_models_dir / part), files(rebuilt / part)
    assert "model.safetensors" in first
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{part}/{name} differs between two seed-0 builds"


@pytest.mark.parametrize("part", PARTS)
def test_each_model_is_a_few_megabytes(tiny_models_dir, part):
    assert sum(len(data) for data in files(tiny_models_dir / part).values()) < 5_000_000


def test_another_seed_gives_other_caption_weights(tiny_models_dir, tmp_path):
    from worker.tiny_models import caption

    caption.build(tmp_path / "caption", seed=1)
    assert (tmp_path / "caption" / "model.safetensors").read_bytes() != (
        tiny_models_dir / "caption" / "model.safetensors"
    ).read_bytes()


def test_caption_model_is_the_real_blip_class(tiny_models_dir):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    folder = tiny_models_dir / "caption"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BlipForConditionalGeneration"]
    model = BlipForConditionalGeneration.from_pretrained(folder)
    processor = BlipProcessor.from_pretrained(folder)
    size = config["vision_config"]["image_size"]
    assert processor.image_processor.size == {"height": size, "width": size}
    # Generation starts from [DEC] and stops at [SEP], as in Salesforce's checkpoint.
    assert processor.tokenizer.convert_ids_to_tokens(model.config.text_config.bos_token_id) == "[DEC]"
    assert processor.tokenizer.convert_ids_to_tokens(model.config.text_config.sep_token_id) == "[SEP]"
    assert (
        processor.tokenizer.decode(processor.tokenizer("a dog on the grass").input_ids, skip_special_tokens=True)
        == "a dog on the grass"
    )


def test_story_and_speech_folders_name_their_real_classes(tiny_models_dir):
    story = json.loads((tiny_models_dir / "story" / "config.json").read_text())
    speech = json.loads((tiny_models_dir / "speech" / "config.json").read_text())
    assert story["architectures"] == ["Qwen2ForCausalLM"]
    assert speech["architectures"] == ["VitsModel"]
