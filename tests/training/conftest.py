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


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models train ~10x faster on one thread when the 2 CPUs are shared with other test runs
    (OpenMP threads spin waiting for each other); module scope so module fixtures that train get it
    too; restored afterwards for everyone else."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
