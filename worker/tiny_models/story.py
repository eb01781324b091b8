"""A random-weight Qwen2 chat model with a Qwen-style tokenizer, built offline in a second.

It stands in for Qwen/Qwen2.5-1.5B-Instruct in tests: same model class, same tokenizer class and
pre-tokenizer, the same special tokens and ChatML chat template, saved with save_pretrained so the
story stage loads it through exactly the from_pretrained code it uses for the real model.
Its text is noise (random weights); that is expected.
"""

from __future__ import annotations

from pathlib import Path

# Qwen2.5's special tokens, in the same order (endoftext, im_start, im_end).
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# ChatML as Qwen2.5 renders it (without tool calls): a default system turn when none is given, and
# the assistant turn opened by add_generation_prompt is a prefix of the full rendered conversation,
# which the trainer relies on to mask the prompt.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# A small English corpus so the BPE learns real-looking merges (words, spaces, punctuation).
_CORPUS = """
Once upon a time a small brown dog lived by the sea. Every morning he ran along the beach and
barked at the waves. One day he found a red ball in the sand. He carried it home to the old
fisherman, who laughed and threw it back into the water. They played until the sun went down.
A girl in a yellow coat stood at the bus stop in the rain. She held a paper bag of warm bread.
The bus was late, so she shared the bread with a man and his son. When the bus finally came,
they were friends, and the rain had stopped.
Two cats sat on a window sill and watched the birds in the garden. The grey cat wanted to jump,
but the white cat was wise and waited. A bird landed close to the glass. Both cats pressed their
noses to the window, and the bird simply sang.
A man rides a bicycle down a quiet street at night. The lamps are bright and the air is cold.
He is carrying flowers for his mother. She opens the door, smiles, and puts the kettle on.
A plate of pasta with tomato sauce sits on a wooden table next to a glass of water and a fork.
The kitchen smells of garlic and basil. Grandma calls the children, and they come running in.
A red car is parked in front of a tall building. The driver checks his watch. He is waiting for
someone important. When she finally arrives, she is carrying a cake, and it is his birthday.
A group of people are standing on a mountain top. The view is wide and green. They take a photo,
eat their lunch, and start the long walk back to the village before the clouds roll in.
The train leaves the station at noon. A boy watches the fields go by and counts the cows. He falls
asleep, and when he wakes up, the sea is shining outside the window. His holiday has begun!
Is it raining? Yes, it is. Will the sun come back? Maybe tomorrow. "Let's go," she said.
A horse stands in a field of flowers. A child brings an apple. The horse eats it slowly, then
follows the child all the way to the farm gate, as if they had always known each other.
A woman is reading a book in a park. Leaves fall around her. A squirrel steals her sandwich,
and she laughs so loudly that the pigeons fly away. Then she buys another sandwich and shares it.
Numbers: 1 2 3 4 5 6 7 8 9 10, 20, 100. Colours: red, blue, green, white, black, orange, pink.
The end. Beginning, middle and end. Story, title, caption, photo, picture, image, scene.
"""


def _train_tokenizer(vocab_size: int):
    """Byte-level BPE with Qwen2's normaliser and pre-tokenizer, trained on the corpus above."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols, so any text (any language, emoji) still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def _make_tokenizer(vocab_size: int = 512):
    import json

    from transformers import Qwen2Tokenizer

    trained = json.loads(_train_tokenizer(vocab_size).to_str())
    vocab = trained["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["model"]["merges"]]
    # The real class, rebuilt from vocab + merges exactly as Qwen's own tokenizer is.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,  # Qwen2.5-Instruct stops on <|im_end|> and pads with <|endoftext|>
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build(out: Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2ForCausalLM + tokenizer to `out` and return `out`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _make_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so logits are well separated: greedy decoding then does not
        # hinge on rounding noise (batched and single runs must pick the same tokens).
        initializer_range=0.5,
        bos_token_id=None,
        eos_token_id=ids[2],
        pad_token_id=ids[0],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[2], ids[0]],  # as Qwen2.5-Instruct: <|im_end|> or <|endoftext|>
        pad_token_id=ids[0],
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
