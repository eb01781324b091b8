"""Fixtures for the trainer's tests: a tiny Qwen2 chat model and small datasets on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training import SMALL_SET, write_jsonl


@pytest.fixture(scope="session")
def tiny_story(tmp_path_factory) -> Path:
    """Only the story model (the trainer needs nothing else), built once per session."""
    from worker.tiny_models.story import build

    return build(tmp_path_factory.mktemp("tiny-story"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_story):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_story)


@pytest.fixture
def small_set(tmp_path) -> Path:
    return write_jsonl(tmp_path / "small.jsonl", SMALL_SET)
