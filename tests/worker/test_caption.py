"""Caption clean-up on realistic BLIP-base outputs, and the stage on the tiny random BLIP."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from worker.engine.caption import FALLBACK_CAPTION, CaptionStage, clean_caption


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("arafed man sitting on a bench in a park", "Man sitting on a bench in a park"),
        ("there is a araffe dog that is sitting on the grass", "There is a dog that is sitting on the grass"),
        ("an arafed woman holding an umbrella", "A woman holding an umbrella"),
        ("arafly dressed woman walking down the street", "Dressed woman walking down the street"),
        ("Arafe view of a city at night", "View of a city at night"),
        ("a close up of a a cat cat on a bed", "A close up of a cat on a bed"),
        ("two dogs playing in the snow .", "Two dogs playing in the snow"),
        ("a man ' s hand holding a cup , coffee", "A man's hand holding a cup, coffee"),
        ("  a   red car   parked  ", "A red car parked"),
        ("a [unk] on the beach", "A on the beach"),
        ("an elephant in an orange field", "An elephant in an orange field"),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


@pytest.mark.parametrize("raw", ["", "   ", "arafed", "araffe araffe .", ", .", None])
def test_clean_caption_never_empty(raw):
    assert clean_caption(raw) == FALLBACK_CAPTION


def test_clean_caption_keeps_words_that_merely_contain_araf():
    assert clean_caption("a giraffe in a carafe shop") == "A giraffe in a carafe shop"


def images(n: int) -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (250, 250, 0), (20, 20, 20)]
    sizes = [(64, 48), (30, 90), (200, 120), (33, 33), (50, 50)]
    return [Image.new("RGB", sizes[i % 5], colours[i % 5]) for i in range(n)]


@pytest.fixture(scope="module")
def stage(tiny_models_dir):
    return CaptionStage(str(tiny_models_dir / "caption"), device="cpu", max_new_tokens=12)


def test_batch_of_three_gives_three_clean_captions(stage):
    captions = stage(images(3))
    assert len(captions) == 3
    for caption in captions:
        assert isinstance(caption, str) and caption and caption[0].isupper()
        assert "araf" not in caption.lower() and "[" not in caption


def test_captions_are_deterministic_and_batch_independent(stage):
    batch = stage(images(3))
    assert batch == stage(images(3))
    assert [stage([img])[0] for img in images(3)] == batch


def test_stage_steps_are_separate(stage):
    stage.load()
    batch = stage.preprocess(images(2) + [Image.new("L", (10, 10), 128)])
    assert batch["pixel_values"].shape[:2] == (3, 3)
    ids = stage.forward(batch)
    assert ids.shape[0] == 3 and ids.shape[1] <= 1 + stage.max_new_tokens
    assert len(stage.postprocess(ids)) == 3


def test_empty_list_needs_no_model(tiny_models_dir):
    lazy = CaptionStage(str(tiny_models_dir / "caption"))
    assert lazy([]) == [] and not lazy.loaded


def test_model_is_published_last(tiny_models_dir):
    seen = []

    class Watched(CaptionStage):
        def __setattr__(self, name, value):
            if name == "model" and value is not None:
                seen.append(self.processor)
            super().__setattr__(name, value)

    Watched(str(tiny_models_dir / "caption")).load()
    assert len(seen) == 1 and seen[0] is not None


def test_load_is_idempotent_and_thread_safe(tiny_models_dir, monkeypatch):
    from transformers import BlipForConditionalGeneration

    calls = []
    original = BlipForConditionalGeneration.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(BlipForConditionalGeneration, "from_pretrained", classmethod(counting))
    fresh = CaptionStage(str(tiny_models_dir / "caption"))
    threads = [threading.Thread(target=fresh.load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fresh.load()
    assert len(calls) == 1
    assert fresh.loaded and not fresh.model.training
