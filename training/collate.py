"""Turn examples into token ids and labels in exactly the format the story stage serves.

The prompt is the engine's own chat messages rendered with add_generation_prompt=True: the very
text the model sees at serving time. Only the story and its end-of-turn token are learned; prompt
and padding labels are -100 (the seed's notebook trained on both, teaching the model to echo).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


class EncodingError(ValueError):
    """The prompt alone does not fit in max_length."""


def prompt_text(tokenizer, caption: str, words: int) -> str:
    from worker.engine.story import build_messages

    return tokenizer.apply_chat_template(build_messages(caption, words), add_generation_prompt=True, tokenize=False)


def end_token_id(tokenizer) -> int:
    """The token that closes an assistant turn in this chat template (<|im_end|> for Qwen2.5).

    Read from the template itself (what follows an assistant message), so a model family with
    another end-of-turn token gets its own; the tokenizer's eos is the fallback.
    """
    marker = "\x00STORY\x00"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = rendered.split(marker, 1)[-1] if marker in rendered else ""
    for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if token and after.startswith(token):
            return tokenizer.convert_tokens_to_ids(token)
    if tokenizer.eos_token_id is None:
        raise EncodingError("the tokenizer has no end-of-turn or eos token to end the story with")
    return tokenizer.eos_token_id


def encode_example(
    tokenizer, prompt: str, story: str, words: int = 40, max_length: int = 512, end_id: int | None = None
) -> dict:
    """input_ids = prompt ids + story ids + end id; labels mask the prompt with -100.

    Prompt and story are tokenised separately and the ids concatenated: tokenising the joined text
    could merge tokens across the boundary, shifting the mask by one. Separate tokenisation is also
    what generation produces (the model emits the story's own tokens after the prompt's).
    Stories too long for max_length are cut; the caller can spot it by the missing end id.
    """
    end_id = end_id if end_id is not None else end_token_id(tokenizer)
    prompt_ids = tokenizer(prompt_text(tokenizer, prompt, words), add_special_tokens=False)["input_ids"]
    story_ids = tokenizer(story, add_special_tokens=False)["input_ids"] + [end_id]
    if len(prompt_ids) >= max_length:
        raise EncodingError(f"the prompt for {prompt!r} is {len(prompt_ids)} tokens; max_length is {max_length}")
    story_ids = story_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + story_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + story_ids,
    }


@dataclass
class Collator:
    """Right-pads a batch: pad id for inputs, 0 for attention, -100 for labels."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, mask, labels = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_token_id] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
            labels.append(f["labels"] + [IGNORE_INDEX] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def pad_id(tokenizer) -> int:
    # Qwen pads with <|endoftext|>; a tokenizer without a pad token pads with its eos (masked anyway).
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return end_token_id(tokenizer)
