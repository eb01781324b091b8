"""The project's own dataset (the default --data): size, length, variety and format."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from training.dataset import load_examples
from training.train import DEFAULT_DATA


@pytest.fixture(scope="module")
def examples():
    return load_examples(DEFAULT_DATA)  # also proves the file passes the trainer's validation


def test_size(examples):
    assert len(examples) >= 160


def test_stories_are_25_to_45_words(examples):
    lengths = {e.where: len(e.story.split()) for e in examples}
    assert {w: n for w, n in lengths.items() if not 25 <= n <= 45} == {}


def test_prompts_look_like_blip_captions(examples):
    prompts = [e.prompt for e in examples]
    assert len(set(p.lower() for p in prompts)) == len(prompts), "duplicate captions"
    for p in prompts:
        # BLIP-base: a short lowercase phrase, no final full stop.
        assert p == p.lower() and 3 <= len(p.split()) <= 14 and not p.endswith("."), p


def test_stories_are_plain_prose(examples):
    for e in examples:
        assert e.story[0].isupper() and e.story[-1] in '.!?"”', e.where
        assert not re.search(r"[#*_`]|^(title|story)\s*:|\n", e.story, re.I), e.where


def test_openings_vary(examples):
    openings = Counter(" ".join(e.story.lower().split()[:4]) for e in examples)
    assert openings.most_common(1)[0][1] <= 2, openings.most_common(3)
    first_words = Counter(e.story.split()[0].lower() for e in examples)
    # The seed's set was one template repeated 200 times; no opening word may dominate.
    assert first_words.most_common(1)[0][1] <= len(examples) // 5, first_words.most_common(3)


def test_no_sentence_is_repeated_across_stories(examples):
    sentences = Counter()
    for e in examples:
        for sentence in set(re.split(r"(?<=[.!?])\s+", e.story)):
            sentences[sentence.strip().lower()] += 1
    assert [s for s, n in sentences.items() if n > 1] == []
