"""The loss mask: only story tokens (and the end-of-turn token) are learned, in the serving format."""

from __future__ import annotations

import pytest

from training.collate import IGNORE_INDEX, Collator, EncodingError, encode_example, end_token_id, pad_id
from worker.engine.story import build_messages

CAPTION = "a dog sitting on a couch"
STORY = "Biscuit was forbidden from the couch. Each night he climbed up anyway, and each morning he looked innocent."


def test_end_token_is_im_end(tiny_tokenizer):
    assert end_token_id(tiny_tokenizer) == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_prompt_is_exactly_what_the_story_stage_sends(tiny_tokenizer):
    features = encode_example(tiny_tokenizer, CAPTION, STORY, words=40)
    served = tiny_tokenizer.apply_chat_template(build_messages(CAPTION, 40), add_generation_prompt=True, tokenize=False)
    served_ids = tiny_tokenizer(served, add_special_tokens=False)["input_ids"]
    n = len(served_ids)
    assert features["input_ids"][:n] == served_ids
    assert features["labels"][:n] == [IGNORE_INDEX] * n
    # Everything after the prompt is learned: the story's own tokens, then <|im_end|>.
    assert IGNORE_INDEX not in features["labels"][n:]
    assert features["labels"][n:] == features["input_ids"][n:]


def test_whole_example_is_the_rendered_conversation(tiny_tokenizer):
    features = encode_example(tiny_tokenizer, CAPTION, STORY, words=25)
    conversation = build_messages(CAPTION, 25) + [{"role": "assistant", "content": STORY}]
    rendered = tiny_tokenizer.apply_chat_template(conversation, tokenize=False)
    # The template ends the turn with "<|im_end|>\n"; generation stops at <|im_end|>.
    assert tiny_tokenizer.decode(features["input_ids"]) == rendered.rstrip("\n")
    assert "about 25 words" in tiny_tokenizer.decode(features["input_ids"])


def test_unmasked_tokens_decode_to_the_story_and_end_token(tiny_tokenizer):
    features = encode_example(tiny_tokenizer, CAPTION, STORY)
    learned = [t for t, label in zip(features["input_ids"], features["labels"], strict=True) if label != IGNORE_INDEX]
    assert tiny_tokenizer.decode(learned) == STORY + "<|im_end|>"
    assert tiny_tokenizer.decode(learned, skip_special_tokens=True) == STORY


def test_collator_pads_inputs_mask_and_labels(tiny_tokenizer):
    short = encode_example(tiny_tokenizer, "a cat", "It slept.")
    long = encode_example(tiny_tokenizer, CAPTION, STORY)
    batch = Collator(pad_id(tiny_tokenizer))([short, long])
    width = len(long["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    pad = width - len(short["input_ids"])
    assert pad > 0
    assert batch["labels"][0, -pad:].tolist() == [IGNORE_INDEX] * pad
    assert batch["attention_mask"][0].tolist() == [1] * len(short["input_ids"]) + [0] * pad
    assert batch["input_ids"][0, -pad:].tolist() == [tiny_tokenizer.pad_token_id] * pad
    assert batch["labels"][1].tolist() == long["labels"] and batch["attention_mask"][1].all()
    learned = [
        t
        for t, label in zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), strict=True)
        if label != IGNORE_INDEX
    ]
    assert tiny_tokenizer.decode(learned) == "It slept.<|im_end|>"


def test_loss_ignores_prompt_and_padding(tiny_story, tiny_tokenizer):
    """The model's loss is the cross-entropy over story tokens alone: -100 drops prompt and padding."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_story).eval()
    batch = Collator(pad_id(tiny_tokenizer))(
        [encode_example(tiny_tokenizer, "a cat", "It slept."), encode_example(tiny_tokenizer, CAPTION, STORY)]
    )
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets[keep])
    assert keep.sum() == sum(len(tiny_tokenizer(s)["input_ids"]) + 1 for s in ("It slept.", STORY))
    assert torch.allclose(loss, manual, atol=1e-5)


def test_long_story_is_cut_but_prompt_never(tiny_tokenizer):
    full = encode_example(tiny_tokenizer, CAPTION, STORY)
    prompt_len = full["labels"].count(IGNORE_INDEX)
    cut = encode_example(tiny_tokenizer, CAPTION, STORY, max_length=prompt_len + 3)
    assert len(cut["input_ids"]) == prompt_len + 3
    assert cut["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    with pytest.raises(EncodingError, match="max_length"):
        encode_example(tiny_tokenizer, CAPTION, STORY, max_length=prompt_len)


def test_each_prompt_asks_for_its_own_storys_length_by_default(tiny_tokenizer):
    from argparse import Namespace

    from training.dataset import Example
    from training.run import encode_all, prompt_words

    assert prompt_words(" ".join(["word"] * 37)) == 35 and prompt_words("two words") == 5
    examples = [
        Example(prompt="a dog", story=" ".join(["bark"] * 23), where="line 1"),
        Example(prompt="a cat", story=" ".join(["purr"] * 41), where="line 2"),
    ]
    for words, expected in ((None, ["about 25 words", "about 40 words"]), (60, ["about 60 words"] * 2)):
        encoded, _ = encode_all(tiny_tokenizer, examples, Namespace(words=words, max_length=512))
        prompts = [tiny_tokenizer.decode(features["input_ids"]) for features in encoded]
        assert [want in text for want, text in zip(expected, prompts, strict=True)] == [True, True]
