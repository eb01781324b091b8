"""Story styles in the engine: two LoRA adapters on the tiny Qwen2, served unmerged on one base model,
and one batch mixing them gives every row exactly what its own adapter gives it."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from worker.engine import Engine
from worker.engine.adapters import AdapterError
from worker.engine.story import StoryStage
from worker.tiny_models import adapter as tiny_adapter

CAPTIONS = [
    "a dog running on a beach",
    "two cats sitting on a window sill",
    "a red car in the rain",
    "a plate of pasta on a table",
]
GREEDY = {"do_sample": False, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def base_dir(tiny_models_dir):
    return tiny_models_dir / "story"  # built once per test session


@pytest.fixture(scope="module")
def styles(base_dir, tmp_path_factory):
    """Two adapters that differ in seed, rank and layers (o_proj only in one: peft skips it for the other's rows)."""
    out = tmp_path_factory.mktemp("styles")
    return {
        "bedtime": str(tiny_adapter.build(base_dir, out / "bedtime", seed=1)),
        "adventure": str(
            tiny_adapter.build(
                base_dir, out / "adventure", seed=2, rank=8, target_modules=("q_proj", "v_proj", "o_proj")
            )
        ),
    }


@pytest.fixture(scope="module")
def stage(base_dir, styles, tmp_path_factory):
    return StoryStage(
        str(base_dir), styles=styles, default_style="adventure", cache_dir=str(tmp_path_factory.mktemp("cache"))
    ).load()


def test_a_mixed_batch_gives_each_row_its_own_adapters_story(base_dir, stage):
    from peft import PeftModel

    assert isinstance(stage.model, PeftModel) and set(stage.model.peft_config) == {"bedtime", "adventure"}
    bedtime = stage(CAPTIONS, styles=["bedtime"] * 4, **GREEDY)
    adventure = stage(CAPTIONS, styles=["adventure"] * 4, **GREEDY)
    mixed_styles = ["bedtime", "adventure", None, "bedtime"]  # None: the default style (adventure)
    mixed = stage(CAPTIONS, styles=mixed_styles, **GREEDY)
    expected = [bedtime[i] if style == "bedtime" else adventure[i] for i, style in enumerate(mixed_styles)]
    assert mixed == expected
    assert stage(CAPTIONS, **GREEDY) == adventure  # no styles named: the default for every row

    base = StoryStage(str(base_dir))(CAPTIONS, **GREEDY)
    assert all(bedtime) and all(adventure)
    for a, b, plain in zip(bedtime, adventure, base, strict=True):  # each caption: three different stories
        assert len({a, b, plain}) == 3, (a, b, plain)


def test_a_style_the_stage_does_not_serve_is_refused(stage, base_dir):
    with pytest.raises(ValueError, match="'poetry' is not served here"):
        stage(CAPTIONS[:1], styles=["poetry"], **GREEDY)
    with pytest.raises(ValueError, match="STORY_STYLES is empty"):
        StoryStage(str(base_dir))(CAPTIONS[:1], styles=["bedtime"], **GREEDY)


def _settings(base_dir, tmp_path, **values) -> Settings:
    return Settings(story_model=str(base_dir), model_cache_dir=str(tmp_path / "cache"), device="cpu", **values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"story_styles": "bedtime"}, "'bedtime' is not name=location"),
        ({"story_styles": "a=x,a=y"}, "names the style 'a' twice"),
        ({"story_styles": "bad.name=x"}, "style name 'bad.name'"),
        ({"story_styles": "a=x", "story_default_style": "b"}, "STORY_DEFAULT_STYLE='b' is not one of"),
        ({"story_default_style": "b"}, "STORY_STYLES is empty"),
        ({"story_styles": "a=x", "story_adapter": "y"}, "STORY_ADAPTER and STORY_STYLES are both set"),
    ],
)
def test_bad_styles_settings_fail_the_story_models_load(base_dir, tmp_path, values, message):
    engine = Engine(_settings(base_dir, tmp_path, **values))  # constructing stays cheap and safe
    with pytest.raises(AdapterError, match=message):
        engine.story.load()


def test_a_style_whose_adapter_is_missing_is_named(base_dir, styles, tmp_path):
    engine = Engine(_settings(base_dir, tmp_path, story_styles=f"bedtime={styles['bedtime']},sea={tmp_path}/nowhere"))
    with pytest.raises(AdapterError, match=r"STORY_STYLES sea '.*nowhere': no such folder"):
        engine.story.load()
    assert engine.style_problem("sea") is None and engine.style_problem(None) is None
    assert "'poetry' is not served by this worker (it serves bedtime, sea" in engine.style_problem("poetry")
