"""Story stage: the prompt format, the clean-up of raw replies, and generation on the tiny Qwen2."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import pytest

from worker.engine.story import SYSTEM_PROMPT, StoryStage, build_messages, clean_story
from worker.tiny_models import story as tiny_story

CAPTIONS = [
    "a dog running on a beach",
    "a red car parked in front of a tall building",
    "two cats sitting on a window sill",
    "a plate of pasta with tomato sauce on a wooden table next to a glass of water",
]


@pytest.fixture(scope="module")
def story_dir(tmp_path_factory):
    # Built here rather than via build_all, so these tests only depend on this module's builder.
    return tiny_story.build(tmp_path_factory.mktemp("story") / "story", seed=0)


@pytest.fixture(scope="module")
def stage(story_dir):
    return StoryStage(str(story_dir)).load()


# --- prompt -----------------------------------------------------------------------------------------
def test_build_messages_system_and_caption():
    messages = build_messages("  a dog\n running on   a beach ", words=30)
    assert [m["role"] for m in messages] == ["system", "user"]
    system = messages[0]["content"]
    assert "about 30 words" in system
    for part in ("beginning", "middle", "end", "no title", "no markdown"):
        assert part in system
    assert messages[1]["content"] == "a dog running on a beach"
    assert "40 words" in build_messages("x")[0]["content"]  # the documented default


def test_build_messages_rejects_bad_length():
    with pytest.raises(ValueError):
        build_messages("a dog", words=0)


# --- clean-up ------------------------------------------------------------------------------------
STORY = "A dog ran along the beach. He found a red ball. He carried it home, tired and happy."

CLEAN_CASES = {
    "plain": (STORY, STORY),
    "preamble": ("Here is a short story about a dog on a beach:\n\n" + STORY, STORY),
    "sure preamble + bold title": (
        "Sure! Here's a 40-word story with a beginning, middle and end:\n\n**The Red Ball**\n\n" + STORY,
        STORY,
    ),
    "inline preamble": ("Here is a short story: " + STORY, STORY),
    "assistant label": ("Assistant: " + STORY, STORY),
    "preamble without colon": ("Okay, here is the story.\n" + STORY, STORY),
    "title and story labels": ("Title: The Red Ball\n\nStory: " + STORY, STORY),
    "heading title": ("# The Red Ball\n\n" + STORY, STORY),
    "plain title line": ("The Red Ball\n" + STORY, STORY),
    "quoted title line": ('"The Red Ball"\n\n' + STORY, STORY),
    "emphasis": ("A dog ran along the *beach*. He found a **red** ball. He carried it home, _tired_ and happy.", STORY),
    "wrapped in quotes": (f'"{STORY}"', STORY),
    "wrapped in curly quotes": (f"“{STORY}”", STORY),
    "dialogue keeps its quotes": (
        '"Come here!" said Tom. The dog came. "Good boy!"',
        '"Come here!" said Tom. The dog came. "Good boy!"',
    ),
    "story label with word count": ("Story (40 words): " + STORY, STORY),
    "beginning middle end labels": (
        "**Beginning:** The dog woke up. **Middle:** The dog ran. **End:** The dog slept.",
        "The dog woke up. The dog ran. The dog slept.",
    ),
    "numbered labels": (
        "1. Beginning: The dog woke up.\n2. Middle: The dog ran.\n3. End: The dog slept.",
        "The dog woke up. The dog ran. The dog slept.",
    ),
    "bullets": ("- The dog woke up.\n- The dog ran.\n* The dog slept.", "The dog woke up. The dog ran. The dog slept."),
    "chat tokens": ("<|im_start|>assistant\n" + STORY + "<|im_end|><|endoftext|>", STORY),
    "a second turn leaks": (STORY + "<|im_end|>\n<|im_start|>user\nWrite another one.", STORY),
    "echoed conversation": (
        "system\n" + SYSTEM_PROMPT.format(words=40) + "\nuser\na dog on a beach\nassistant\n" + STORY,
        STORY,
    ),
    "echoed system prompt": (SYSTEM_PROMPT.format(words=25) + "\n\n" + STORY, STORY),
    "blank lines": ("A dog ran.\n\n\n\nHe slept.\n\n\n", "A dog ran.\n\nHe slept."),
    "trailing chatter": (STORY + "\n\nI hope you enjoyed this story!", STORY),
    "word count note": (STORY + "\n\n(38 words)", STORY),
    "horizontal rule": ("---\n" + STORY + "\n---", STORY),
    "cut mid-sentence": (STORY + " Then, just as the sun", STORY),
    "cut after a quote": ('He barked. "Wait!" she cried. Then the', 'He barked. "Wait!" she cried.'),
    "abbreviation is not an end": ("The dog met Mr. Smith. Mr. Smith smiled at", "The dog met Mr. Smith."),
    "no full sentence": (
        "once upon a time, in a quiet village by the sea,",
        "Once upon a time, in a quiet village by the sea.",
    ),
    "cut-off quoted story": ('"The dog ran away. Then it came back', "The dog ran away."),
    "control bytes": ("A dog\x07 ran.\ufffd He slept.", "A dog ran. He slept."),
    "ellipsis ends a sentence": ("The dog waited...", "The dog waited..."),
    "empty": ("", ""),
    "only tokens": ("<|im_end|>", ""),
}


@pytest.mark.parametrize("raw,expected", list(CLEAN_CASES.values()), ids=list(CLEAN_CASES))
def test_clean_story(raw, expected):
    assert clean_story(raw) == expected


def test_clean_story_drops_echoed_caption():
    caption = "a dog on a beach"
    assert clean_story("A dog on a beach.\n\n" + STORY, caption) == STORY
    assert clean_story("A dog on a beach. " + STORY, caption) == STORY
    assert clean_story("Caption: a dog on a beach\n" + STORY, caption) == STORY
    # The caption's words opening a real sentence are part of the story.
    assert clean_story("A dog on a beach chased the waves.", caption) == "A dog on a beach chased the waves."


# --- the tiny model --------------------------------------------------------------------------------
def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_model_is_deterministic_and_small(tmp_path, story_dir):
    again = tiny_story.build(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(story_dir)
    other = tiny_story.build(tmp_path / "other", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(story_dir)["model.safetensors"]
    assert sum(p.stat().st_size for p in story_dir.iterdir()) < 3_000_000
    config = json.loads((story_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]


def test_tiny_tokenizer_is_qwen_like(stage):
    tok = stage.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert len(tok) == stage.model.config.vocab_size
    prompt = tok.apply_chat_template(build_messages("a cat"), tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\na cat<|im_end|>\n" in prompt
    # Any text round-trips (byte-level BPE), so real captions never hit an unknown token.
    text = "Zoë's café: 3 dogs & 2 cats!"
    assert tok.decode(tok(text)["input_ids"]) == text


# --- the stage -----------------------------------------------------------------------------------
def test_stories_are_clean_strings(stage):
    stories = stage(CAPTIONS, seed=0, max_new_tokens=24)
    assert len(stories) == len(CAPTIONS)
    for story in stories:
        assert isinstance(story, str) and story.strip()
        assert "<|" not in story and "im_end" not in story


def test_greedy_batch_equals_single_calls(stage):
    batch = stage(CAPTIONS, do_sample=False, max_new_tokens=24)
    singles = [stage([caption], do_sample=False, max_new_tokens=24)[0] for caption in CAPTIONS]
    assert batch == singles
    assert len(set(batch)) > 1  # the captions really reached the model


def test_seed_makes_sampling_reproducible(stage):
    first = stage(CAPTIONS[:2], seed=7, max_new_tokens=24)
    assert stage(CAPTIONS[:2], seed=7, max_new_tokens=24) == first
    others = [stage(CAPTIONS[:2], seed=s, max_new_tokens=24) for s in (8, 9)]
    assert any(o != first for o in others)


def test_forward_returns_only_new_tokens(stage):
    batch = stage.preprocess(CAPTIONS[:2])
    new_ids = stage.forward(batch, do_sample=False, max_new_tokens=12)
    assert 0 < new_ids.shape[1] <= 12
    full = stage.model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=stage.tokenizer.pad_token_id)
    assert full[:, batch["input_ids"].shape[1] :].tolist() == new_ids.tolist()
    decoded = stage.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    for text, caption in zip(decoded, CAPTIONS[:2], strict=True):
        assert "storyteller" not in text and caption not in text


def test_max_new_tokens_follows_words(stage, monkeypatch):
    seen = []
    forward = stage.forward
    monkeypatch.setattr(stage, "forward", lambda batch, **kw: seen.append(kw["max_new_tokens"]) or forward(batch, **kw))
    stage(["a cat"], words=10, do_sample=False)
    stage(["a cat"], words=10, do_sample=False, max_new_tokens=5)
    assert seen == [10 * 2 + 32, 5]
    assert stage([], words=10) == []


def test_load_once_across_threads(story_dir, monkeypatch):
    import transformers

    calls = []
    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: calls.append(a) or original(*a, **kw)
    )
    fresh = StoryStage(str(story_dir))
    assert not fresh.loaded and fresh.model is None  # constructing loads nothing
    threads = [threading.Thread(target=fresh.load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model = fresh.model
    assert fresh.loaded and fresh.load().model is model
    assert len(calls) == 1


def test_model_is_published_last(story_dir):
    # load() skips the lock once `model` is set, so everything else must be ready by then.
    seen = []

    class Watched(StoryStage):
        def __setattr__(self, name, value):
            if name == "model" and value is not None:
                seen.append((self.tokenizer, self.device))
            super().__setattr__(name, value)

    Watched(str(story_dir)).load()
    assert len(seen) == 1 and all(part is not None for part in seen[0])


def test_missing_pad_token_falls_back_to_eos(story_dir, tmp_path):
    folder = shutil.copytree(story_dir, tmp_path / "nopad")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    stage = StoryStage(str(folder)).load()
    assert stage.tokenizer.pad_token == stage.tokenizer.eos_token
    assert stage.tokenizer.padding_side == "left"
    assert all(stage(CAPTIONS[:2], do_sample=False, max_new_tokens=8))


def test_quantize_on_cpu_is_a_clear_error(story_dir):
    from worker.engine.devices import ConfigError

    with pytest.raises(ConfigError, match="CUDA"):
        StoryStage(str(story_dir), quantize="4bit").load()


def test_prompt_tokens_are_a_prefix_of_the_training_conversation(stage):
    # The trainer masks the prompt by its token length: the prompt's tokens must be exactly the
    # first tokens of prompt + story + <|im_end|>, whether the conversation is tokenized whole or in parts.
    tok = stage.tokenizer
    messages = build_messages("a dog on a beach")
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": STORY}], tokenize=False)
    assert full.startswith(prompt) and full[len(prompt) :].startswith(STORY + tok.eos_token)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[len(prompt_ids) :] == tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]


# --- the static KV cache (compiled on a GPU) ----------------------------------------------------------
@pytest.fixture(scope="module")
def static_stage(story_dir):
    return StoryStage(str(story_dir), static_cache=True, max_batch=16).load()


def test_static_cache_is_off_on_a_cpu_unless_asked_for(stage, static_stage):
    assert stage.static_cache is False and static_stage.static_cache is True
    assert static_stage.buckets == [1, 4, 16]


@pytest.mark.parametrize("rows", [1, 3, 4, 6])
def test_static_cache_and_padded_buckets_give_the_plain_path_s_greedy_tokens(stage, static_stage, rows):
    captions = [CAPTIONS[i % len(CAPTIONS)] + f" number {i}" for i in range(rows)]
    plain = stage.forward(stage.preprocess(captions), do_sample=False, max_new_tokens=24)
    fast = static_stage.forward(static_stage.preprocess(captions), do_sample=False, max_new_tokens=24)
    assert fast.shape[0] == rows  # the padding rows are dropped again
    assert fast.tolist() == plain.tolist()


def test_static_cache_pads_rows_to_a_bucket_and_reuses_one_cache_per_bucket(static_stage, monkeypatch):
    from worker.engine.story import CACHE_BLOCK

    seen = []
    generate = static_stage.model.generate
    monkeypatch.setattr(
        static_stage.model,
        "generate",
        lambda **kw: seen.append((kw["input_ids"].shape[0], kw["cache"], "stopping_criteria" in kw)) or generate(**kw),
    )
    first = static_stage(CAPTIONS[:3], do_sample=False, max_new_tokens=8)
    static_stage(CAPTIONS[:1], seed=3, max_new_tokens=8)
    again = static_stage(CAPTIONS[:3], do_sample=False, max_new_tokens=8)
    assert [(rows, padded) for rows, _, padded in seen] == [(4, True), (1, False), (4, True)]
    # The compiled step keeps its cache's addresses: the same bucket gets the same cache, emptied.
    assert seen[0][1] is seen[2][1] and seen[0][1] is not seen[1][1]
    assert again == first
    assert static_stage._caches[4][0] == CACHE_BLOCK


def test_padding_rows_are_done_from_the_first_step(static_stage, monkeypatch):
    # Sampled copies of the last row must not keep a batch decoding after its real rows have ended.
    import torch

    criteria = []
    generate = static_stage.model.generate
    monkeypatch.setattr(
        static_stage.model, "generate", lambda **kw: criteria.append(kw["stopping_criteria"]) or generate(**kw)
    )
    static_stage(CAPTIONS[:3], seed=1, max_new_tokens=4)
    ids = torch.zeros((4, 9), dtype=torch.long)
    assert criteria[0](ids, None).tolist() == [False, False, False, True]


def test_a_seeded_story_alone_is_the_same_on_both_paths(stage, static_stage):
    # A seeded job runs in a call of its own (worker/engine/pipeline.py groups by seed), never padded.
    assert static_stage(CAPTIONS[:1], seed=11, max_new_tokens=24) == stage(CAPTIONS[:1], seed=11, max_new_tokens=24)


def test_more_rows_than_the_largest_batch_run_in_pieces(story_dir, stage, monkeypatch):
    small = StoryStage(str(story_dir), max_batch=2).load()
    seen = []
    forward = small.forward
    monkeypatch.setattr(
        small, "forward", lambda batch, **kw: seen.append(len(batch["input_ids"])) or forward(batch, **kw)
    )
    assert small(CAPTIONS, do_sample=False, max_new_tokens=16) == stage(CAPTIONS, do_sample=False, max_new_tokens=16)
    assert seen == [2, 2]


def test_warm_up_compiles_every_bucket_and_nothing_without_the_static_cache(stage, static_stage, monkeypatch):
    assert stage.warm_up() == []
    seen = []
    forward = static_stage.forward
    monkeypatch.setattr(
        static_stage, "forward", lambda batch, **kw: seen.append(len(batch["input_ids"])) or forward(batch, **kw)
    )
    assert static_stage.warm_up() == [1, 4, 16]
    assert seen == [1, 4, 16]


def test_styles_decode_without_the_static_cache(story_dir, tmp_path):
    from worker.tiny_models import adapter

    styles = {"calm": str(adapter.build(story_dir, tmp_path / "calm", seed=1))}
    assert StoryStage(str(story_dir), styles=styles, static_cache=True).load().static_cache is False


def broken_static_cache(*args, **kwargs):
    raise RuntimeError("CUDA graph capture failed: operation not permitted when stream is capturing")


@pytest.mark.parametrize("setting", [None, True], ids=["auto", "on"])
def test_a_failing_static_cache_falls_back_to_eager_decoding_only_when_auto(story_dir, monkeypatch, caplog, setting):
    stage = StoryStage(str(story_dir), static_cache=setting, max_batch=16).load()
    stage.static_cache = True  # as on a GPU (auto turns it on only there)
    monkeypatch.setattr(stage, "_static_cache", broken_static_cache)
    if setting:  # STATIC_CACHE=on: the operator asked for it, so the failure stands
        with pytest.raises(RuntimeError, match="CUDA graph"):
            stage.warm_up()
        return
    with caplog.at_level("WARNING", logger="worker.engine.story"):
        assert stage.warm_up() == []
    assert stage.static_cache is False
    [warning] = [r.getMessage() for r in caplog.records if "STATIC_CACHE" in r.getMessage()]
    assert "RuntimeError: CUDA graph capture failed" in warning and "eagerly" in warning
    plain = StoryStage(str(story_dir), max_batch=16).load()
    captions = ["A red kite over a beach", "Two cats on a sofa", "A lighthouse at dusk"]
    eager = stage.forward(stage.preprocess(captions), do_sample=False, max_new_tokens=12)
    assert eager.tolist() == plain.forward(plain.preprocess(captions), do_sample=False, max_new_tokens=12).tolist()
