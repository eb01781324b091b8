"""Full-size random models (worker/tiny_models/full_size.py) at one layer: real widths and vocabularies,
a worst-case workload (nothing stops early) that still decodes to words and speaks at MMS's pace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.fixtures import built_once
from worker.engine.story_text import clean_story

pytestmark = pytest.mark.slow  # the full-size model builder

FORTY_WORDS = (
    "A small brown dog ran along the beach every morning and barked at the waves. One day he found a red "
    "ball in the sand, carried it home to the fisherman, and they played together until the sun went down."
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One build per test run, through the command line."""
    from worker.tiny_models.__main__ import main

    def build(out: Path) -> None:
        assert main(["--full-size", "--layers", "1", "--out", str(out), "--no-report"]) == 0

    return built_once(tmp_path_factory, "full-size", build)


def config(models, part: str, *keys: str, section: str | None = None) -> dict:
    data = json.loads((models / part / "config.json").read_text())
    data = data[section] if section else data
    return {key: data[key] for key in keys}


def test_configs_have_the_real_sizes(models):
    sizes = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_attention_heads=12)
    assert config(models, "story", *sizes, "num_key_value_heads") == dict(sizes, num_key_value_heads=2)
    assert config(models, "story", "num_hidden_layers", "tie_word_embeddings", "rope_parameters", "dtype") == dict(
        num_hidden_layers=1,  # --layers 1
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        dtype="bfloat16",
    )
    assert config(models, "caption", "hidden_size", "image_size", "patch_size", section="vision_config") == dict(
        hidden_size=768, image_size=384, patch_size=16
    )
    assert config(models, "caption", "vocab_size", "hidden_size", "num_attention_heads", section="text_config") == dict(
        vocab_size=30524, hidden_size=768, num_attention_heads=12
    )
    assert config(models, "caption", "projection_dim", "image_text_hidden_size") == dict(
        projection_dim=512, image_text_hidden_size=256
    )
    processor = json.loads((models / "caption" / "processor_config.json").read_text())
    assert processor["image_processor"]["size"] == {"height": 384, "width": 384}
    assert config(models, "speech", "hidden_size", "spectrogram_bins", "upsample_rates", "num_hidden_layers") == dict(
        hidden_size=192, spectrogram_bins=513, upsample_rates=[8, 8, 2, 2], num_hidden_layers=6
    )


def test_one_engine_runs_every_model_to_its_limit(models):
    """One test, so that one xdist worker loads the models: the report's counts, greedy stories and a
    40-word story's audio."""
    from worker.tiny_models.full_size_report import engine_for, report, speech_stage

    # bf16: on this CPU the 151,936-row LM head reads half the bytes per token, twice as fast as f32.
    engine = engine_for(models, "cpu", dtype="bfloat16")
    result = report(models, words=10, seed=3, engine=engine)  # a 52-token story: the same code, less CPU time
    check_report(result)
    check_greedy_stories(engine.story.load())
    assert len(FORTY_WORDS.split()) == 40
    assert 10 < speech_stage(engine)([FORTY_WORDS], seed=0)[0].seconds < 20


def check_report(result: dict) -> None:
    assert result["caption_tokens"] == 30
    assert re.fullmatch(r"[A-Z][a-z]*(?: [a-z]+)+", result["caption"]), result["caption"]
    assert result["story_limit"] == 52 and result["story_tokens"] == 52
    assert result["zero_row_mass"] < 1e-6
    # Every generated word survives clean_story, which only capitalises and ends the sentence.
    raw, story = result["story_raw"], result["story"]
    assert len(raw.split()) == 52 and story.endswith(".")
    assert story.rstrip(".").lower().split() == raw.lower().split()
    # All of it reaches speech but the full stop and a space where a long sentence is cut into chunks.
    assert len(story) - 4 <= result["speech_chars"] < len(story)
    assert 8 < result["audio_seconds"] < 25
    assert result["story_params"] > 280e6 and result["caption_params"] > 40e6 and result["speech_params"] > 36e6


def check_greedy_stories(story) -> None:
    """Greedy decoding too runs to the bench's limit: 112 tokens, what a 40-word story is allowed."""
    batch = story.preprocess(["a dog running on a beach", "two cats on a window sill"], words=40)
    new_ids = story.forward(batch, do_sample=False, max_new_tokens=112)
    assert new_ids.shape == (2, 112)
    for row, raw in zip(new_ids, story.tokenizer.batch_decode(new_ids, skip_special_tokens=True), strict=True):
        assert not set(row.tolist()) & {story.tokenizer.pad_token_id, story.tokenizer.eos_token_id}
        assert len(raw.split()) == 112 and re.fullmatch(r"( [A-Za-z]+)+", raw), raw
        assert clean_story(raw).rstrip(".").lower().split() == raw.lower().split()
        assert len(set(raw.split())) > 20  # words, not one word over and over
