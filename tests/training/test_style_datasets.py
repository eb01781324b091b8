"""The story-style datasets (bedtime, adventure): each a usable, original set, and the two distinct."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from training.dataset import read_dataset
from training.train import DEFAULT_DATA

DATA = DEFAULT_DATA.parent
STYLES = ("bedtime", "adventure")


def sentences(story: str) -> set[str]:
    return {s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", story)}


@pytest.fixture(scope="module")
def datasets():
    # read_dataset is the trainer's own validation: a bad row here would stop `training.train` too.
    return {style: read_dataset(DATA / f"{style}.jsonl") for style in STYLES}


@pytest.mark.parametrize("style", STYLES)
def test_size_and_no_duplicates(datasets, style):
    dataset = datasets[style]
    assert len(dataset.examples) >= 100
    assert dataset.duplicates == []
    assert len({e.story for e in dataset.examples}) == len(dataset.examples)


@pytest.mark.parametrize("style", STYLES)
def test_stories_are_25_to_50_words_of_plain_prose(datasets, style):
    for e in datasets[style].examples:
        assert 25 <= len(e.story.split()) <= 50, (e.where, len(e.story.split()))
        assert e.story[0].isupper() and e.story[-1] in '.!?"”', e.where
        assert not re.search(r"[#*_`]|^(title|story)\s*:|\n", e.story, re.I), e.where


@pytest.mark.parametrize("style", STYLES)
def test_prompts_look_like_blip_captions(datasets, style):
    prompts = [e.prompt for e in datasets[style].examples]
    assert len(set(prompts)) == len(prompts), "a caption is used twice"
    for p in prompts:
        assert p == p.lower() and 3 <= len(p.split()) <= 14 and not p.endswith("."), p


@pytest.mark.parametrize("style", STYLES)
def test_no_template_repeated(datasets, style):
    examples = datasets[style].examples
    openings = Counter(" ".join(e.story.lower().split()[:4]) for e in examples)
    assert openings.most_common(1)[0][1] == 1, openings.most_common(3)
    first_words = Counter(e.story.split()[0].lower() for e in examples)
    assert first_words.most_common(1)[0][1] <= len(examples) // 5, first_words.most_common(3)
    repeated = Counter(s for e in examples for s in sentences(e.story))
    assert [s for s, n in repeated.items() if n > 1] == []


def test_the_styles_and_the_default_set_share_no_story_or_sentence(datasets):
    default = read_dataset(DEFAULT_DATA).examples
    sets = {
        name: {s for e in examples for s in sentences(e.story)}
        for name, examples in (("default", default), *((s, d.examples) for s, d in datasets.items()))
    }
    assert sets["bedtime"].isdisjoint(sets["adventure"])
    assert sets["bedtime"].isdisjoint(sets["default"]) and sets["adventure"].isdisjoint(sets["default"])


def test_bedtime_is_calm_and_adventure_is_lively(datasets):
    # A rough lexical guard that the styles stay apart as the files grow: most bedtime stories use
    # words of rest and few use words of action; adventure the other way round.
    calm = re.compile(
        r"\b(sleep\w*|slept|asleep|dream\w*|drows\w*|yawn\w*|quiet\w*|soft\w*|gentl\w*|slow\w*|"
        r"rest\w*|calm|still|warm\w*|hush\w*|doz\w*|nap|lullaby|peaceful\w*|goodnight|snug\w*|curl\w*)\b"
    )
    lively = re.compile(
        r"\b(rac\w+|sprint\w*|leap\w*|leapt|dash\w*|charg\w*|chas\w*|climb\w*|scrambl\w*|"
        r"grabb?\w*|burst|roar\w*|dodg\w*|swerv\w*|plung\w*|gallop\w*|jump\w*|dove|dived|rescu\w*|"
        r"found|spotted|escap\w*|fled|snapp?\w*|crash\w*|storm\w*|won|cheer\w*|triumph\w*|hero|"
        r"swung|squeez\w*|kick\w*|haul\w*|heav\w*|tackl\w*|sprang|scal\w*|battl\w*|defend\w*)\b"
    )

    def share(style, pattern):
        examples = datasets[style].examples
        return sum(bool(pattern.search(e.story.lower())) for e in examples) / len(examples)

    assert share("bedtime", calm) >= 0.8 and share("adventure", calm) <= 0.25
    assert share("adventure", lively) >= 0.8 and share("bedtime", lively) <= 0.25
