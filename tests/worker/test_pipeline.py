"""The whole engine on the tiny models: every accepted photo becomes a valid MP3, load-once, batching."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter

import pytest
from pydub import AudioSegment

from shared.images import load_image
from shared.settings import Settings
from tests.support.photos import sample_images
from worker.engine import ConfigError, Engine, Narration

WORDS = 10  # short stories keep the tiny models quick


def make_settings(models, **overrides) -> Settings:
    values = dict(
        caption_model=str(models / "caption"),
        story_model=str(models / "story"),
        speech_model=str(models / "speech"),
        device="cpu",
        dtype="auto",
        quantize="none",
        story_words=WORDS,
        story_adapter=None,
    )
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def engine(tiny_models_dir) -> Engine:
    return Engine(make_settings(tiny_models_dir))


@pytest.fixture(scope="module")
def sample_rate(tiny_models_dir) -> int:
    config = json.loads((tiny_models_dir / "speech" / "config.json").read_text())
    return config["sampling_rate"]


def decode_mp3(data: bytes) -> AudioSegment:
    assert data[:3] == b"ID3" or data[0] == 0xFF, "not an MP3 stream"
    return AudioSegment.from_file(io.BytesIO(data), format="mp3")


@pytest.fixture
def load_counter(monkeypatch) -> Counter:
    """Counts from_pretrained calls per model class (BLIP, Qwen2 through the Auto class, VITS)."""
    from transformers import PreTrainedModel

    counts: Counter = Counter()
    original = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        counts[cls.__name__] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return counts


@pytest.mark.process
def test_import_and_construction_load_nothing(tiny_models_dir):
    code = (
        "import sys; from pathlib import Path; from worker.engine import Engine; "
        "from shared.settings import Settings; "
        f"m = Path({str(tiny_models_dir)!r}); "
        "e = Engine(Settings(caption_model=str(m/'caption'), story_model=str(m/'story'), "
        "speech_model=str(m/'speech'), device='cpu')); "
        "print('transformers' in sys.modules, sorted(e._stages))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []"


@pytest.mark.slow
def test_ten_narrations_load_each_model_once(tiny_models_dir, load_counter):
    fresh = Engine(make_settings(tiny_models_dir))
    image = load_image(sample_images()["rgb.jpg"])
    for seed in range(10):
        narration = fresh.narrate(image, words=6, seed=seed)
        assert narration.mp3
    assert load_counter == Counter(BlipForConditionalGeneration=1, Qwen2ForCausalLM=1, VitsModel=1)
    fresh.load()  # warming again is free
    assert sum(load_counter.values()) == 3


@pytest.fixture(scope="module")
def every_format(engine) -> dict[str, Narration]:
    names = sorted(sample_images())
    images = [load_image(sample_images()[name]) for name in names]
    return dict(zip(names, engine.narrate_batch(images, seeds=[0] * len(names)), strict=True))


@pytest.mark.parametrize("name", sorted(sample_images()))
def test_every_accepted_photo_becomes_a_valid_mp3(every_format, sample_rate, name):
    narration = every_format[name]
    assert narration.caption and narration.story
    audio = decode_mp3(narration.mp3)
    assert audio.frame_rate == sample_rate == narration.sample_rate
    assert audio.channels == 1
    assert len(audio) > 0 and narration.audio_seconds > 0
    # The MP3 holds the synthesised audio (encoders add at most a few frames of padding).
    assert abs(len(audio) / 1000 - narration.audio_seconds) < 0.2


def test_single_narration_timings_and_json(engine, sample_rate):
    narration = engine.narrate(load_image(sample_images()["rgba.png"]), seed=3)
    assert set(narration.timings) == {"caption", "story", "speech", "encode"}
    assert all(v >= 0 for v in narration.timings.values())
    data = narration.to_json()
    assert "mp3" not in data
    assert json.loads(json.dumps(data))["caption"] == narration.caption
    assert decode_mp3(narration.mp3).frame_rate == sample_rate


def test_progress_is_reported_at_each_stage(engine):
    events = []
    narration = engine.narrate(
        load_image(sample_images()["gray.png"]),
        seed=1,
        on_progress=lambda stage, fields: events.append((stage, dict(fields))),
    )
    assert events == [
        ("caption", {}),
        ("story", {"caption": narration.caption}),
        ("speech", {"story": narration.story}),
    ]


def test_seeded_narration_is_reproducible(engine):
    image = load_image(sample_images()["photo.bmp"])
    first, second = engine.narrate(image, seed=42), engine.narrate(image, seed=42)
    assert (first.caption, first.story, first.mp3) == (second.caption, second.story, second.mp3)


def test_batch_of_four_equals_four_single_greedy_calls(engine):
    names = ["rgb.jpg", "cmyk.jpg", "animated.gif", "photo.tiff"]
    images = [load_image(sample_images()[n]) for n in names]
    batch = engine.narrate_batch(images, sample=False)
    singles = [engine.narrate(img, sample=False) for img in images]
    assert [(n.caption, n.story) for n in batch] == [(n.caption, n.story) for n in singles]
    assert all(n.audio_seconds > 0 for n in batch)


def test_narrate_batch_checks_its_arguments(engine):
    assert engine.narrate_batch([]) == []
    with pytest.raises(ValueError, match="2 images but 1 seeds"):
        engine.narrate_batch([load_image(sample_images()["rgb.jpg"])] * 2, seeds=[1])


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantize_on_cpu_fails_at_start_up(tiny_models_dir, mode):
    with pytest.raises(ConfigError, match=f"QUANTIZE={mode} needs a CUDA GPU"):
        Engine(make_settings(tiny_models_dir, quantize=mode))


def test_sampling_settings_reach_the_story_model(tiny_models_dir, monkeypatch):
    from worker.engine.story import StoryStage

    seen = {}
    original = StoryStage.__call__

    def spy(self, captions, **kwargs):
        seen.update(kwargs)
        return original(self, captions, **kwargs)

    monkeypatch.setattr(StoryStage, "__call__", spy)
    settings = Settings(
        caption_model=str(tiny_models_dir / "caption"),
        story_model=str(tiny_models_dir / "story"),
        speech_model=str(tiny_models_dir / "speech"),
        device="cpu",
        story_words=10,
        story_temperature=0.3,
        story_top_p=0.5,
    )
    Engine(settings).narrate(load_image(sample_images()["rgb.jpg"]), seed=1)
    assert (seen["temperature"], seen["top_p"], seen["do_sample"]) == (0.3, 0.5, True)


def test_a_seeded_job_gets_the_same_story_and_voice_in_any_batch(engine):
    images = [load_image(sample_images()[n]) for n in ("rgb.jpg", "cmyk.jpg", "photo.tiff")]
    alone = engine.narrate(images[0], seed=5)
    batch = engine.narrate_batch(images, seeds=[5, None, 7])
    assert (batch[0].caption, batch[0].story, batch[0].mp3) == (alone.caption, alone.story, alone.mp3)


def test_encode_false_leaves_the_mp3_to_encode(engine):
    images = [load_image(sample_images()[n]) for n in ("rgb.jpg", "cmyk.jpg")]
    pending = engine.narrate_batch(images, seeds=[3, 3], encode=False)
    assert [n.mp3 for n in pending] == [b"", b""] and all(n.speech is not None for n in pending)
    assert all("encode" not in n.timings for n in pending)
    done = engine.encode(pending)
    assert done is pending and all(n.speech is None and n.timings["encode"] > 0 for n in done)
    encoded = engine.narrate_batch(images, seeds=[3, 3])
    assert [n.mp3 for n in done] == [n.mp3 for n in encoded]
    assert decode_mp3(done[0].mp3).duration_seconds > 0


def test_batch_size_defaults_by_device(tiny_models_dir):
    from worker.engine.pipeline import CPU_BATCH_SIZE

    assert Engine(make_settings(tiny_models_dir)).batch_size == CPU_BATCH_SIZE
    assert Engine(make_settings(tiny_models_dir, worker_batch_size=3)).batch_size == 3
    engine = Engine(make_settings(tiny_models_dir, worker_batch_size=3))
    assert engine.story.max_batch == 3 and engine.caption.max_batch == 3


def test_load_warms_the_static_cache_when_it_is_on(tiny_models_dir):
    on = Engine(make_settings(tiny_models_dir, static_cache="on", worker_batch_size=4))
    seconds = on.load()
    assert on.story.static_cache and set(seconds) == {"caption", "story", "speech", "warm_up"}
    off = Engine(make_settings(tiny_models_dir))  # auto: off on a CPU
    assert set(off.load()) == {"caption", "story", "speech"} and not off.story.static_cache
