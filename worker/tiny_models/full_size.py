"""Random-weight models of the real sizes (BLIP base, Qwen2.5-1.5B-Instruct, MMS-TTS-eng), built offline.

They cost what the real checkpoints cost on a GPU, so the bench can measure throughput without the hub.
The tokenizers and processors are the tiny models' own (caption.py, story.py, speech.py); only the
weights are full size. Random weights are shaped into a worst-case workload that is still speakable:

- story: the tied embedding rows (input embedding = output logit weight) are zero except for ordinary
  tokens of a space and letters (" dog"), which get std STORY_EMBED_STD: logits are then exactly 0 for
  every id the tiny tokenizer cannot decode, the special ids (<|im_end|>, ...) and punctuation, while the
  word logits (final RMSNorm output, norm ~sqrt(1536), times a row) spread with std ~15 and the best sits
  ~40 above 0, so neither greedy decoding nor sampling picks a zero row (report() measures it). Stories
  never end early, never end a sentence (clean_story keeps every word and adds the full stop) and are a
  word per token, ~450 characters for 112 tokens, as much as real prose.
  Word salad, not one word repeated: the residual stream carries the current token's own embedding, so
  the final norm's weight is -1 (the token is its own worst successor, not its best), and the layers'
  output projections are scaled by LAYER_GAIN so the context, through attention, picks the next word.
- caption: the LM head's bias is far negative but for the tiny BERT vocabulary's words and letters (so
  for [SEP], the end id, and every id the tokenizer cannot decode): beam search runs its 30 tokens to words.
- speech: the duration predictor's last flow is pinned so every token lasts 2 frames (~15 s for a
  40-word story, as MMS speaks it), whatever the random rest of the network says.

`layers` shrinks every transformer's depth (not its width) for a quick CPU check.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

QWEN_LAYERS = 28
BLIP_LAYERS = 12
STORY_EMBED_STD = 0.4  # word rows; 0.02 (the usual init) would leave logits ~0, level with the zero rows
LAYER_GAIN = 5.0  # on o_proj and down_proj: each layer adds ~3.4 rms to the residual, the embedding 0.4
BLOCKED_BIAS = -1e4  # BLIP LM-head bias of ids a caption must not use; fits bf16 and fp16
FRAMES_PER_TOKEN = 1.5  # exp(log duration): ceil() makes it 2 frames of 256 samples per token
_STORY_TOKEN = re.compile(r" [A-Za-z]+")  # a word: no . ! ? newline, digit or markdown

# facebook/mms-tts-eng's config.json (the same as VitsConfig's defaults in transformers 5.24; set here so
# a change of defaults cannot shrink the model).
MMS_TTS_ENG = dict(
    hidden_size=192,
    num_hidden_layers=6,
    num_attention_heads=2,
    ffn_dim=768,
    flow_size=192,
    spectrogram_bins=513,
    upsample_initial_channel=512,
    upsample_rates=[8, 8, 2, 2],
    upsample_kernel_sizes=[16, 16, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    use_stochastic_duration_prediction=True,
    duration_predictor_num_flows=4,
    duration_predictor_filter_channels=256,
    prior_encoder_num_flows=4,
    prior_encoder_num_wavenet_layers=4,
    posterior_encoder_num_wavenet_layers=16,
    sampling_rate=16_000,
)


@contextmanager
def _seeded(seed: int):
    import torch

    # fork_rng: building must not disturb the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def story_word_ids(tokenizer) -> list[int]:
    """The ids the story model may emit: ordinary tokens that decode to a space and letters."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special and _STORY_TOKEN.fullmatch(tokenizer.decode([i]))]


def caption_word_ids(vocab: list[str]) -> list[int]:
    """Whole words and letters of the tiny BERT vocabulary: no [SEP]/[PAD]/..., ## pieces or punctuation
    (a caption starting with a ## piece decodes to '##a ...')."""
    return [i for i, token in enumerate(vocab) if token.isalpha()]


def build_caption(out: Path, seed: int = 0, layers: int | None = None) -> Path:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    from worker.tiny_models.caption import make_processor, make_vocab

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab()
    depth = layers or BLIP_LAYERS
    # Salesforce/blip-image-captioning-base's config.json; only the special ids are the tiny vocabulary's.
    config = BlipConfig(
        text_config=dict(
            vocab_size=30524,
            hidden_size=768,
            encoder_hidden_size=768,
            intermediate_size=3072,
            projection_dim=768,
            num_hidden_layers=depth,
            num_attention_heads=12,
            max_position_embeddings=512,
            bos_token_id=vocab.index("[DEC]"),
            pad_token_id=vocab.index("[PAD]"),
            sep_token_id=vocab.index("[SEP]"),
            eos_token_id=vocab.index("[SEP]"),
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            projection_dim=512,
            num_hidden_layers=depth,
            num_attention_heads=12,
            image_size=384,
            patch_size=16,
            initializer_range=0.02,
        ),
        projection_dim=512,
        image_text_hidden_size=256,
    )
    with _seeded(seed):
        model = BlipForConditionalGeneration(config).eval()
    blocked = torch.ones(config.text_config.vocab_size, dtype=torch.bool)
    blocked[caption_word_ids(vocab)] = False
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[blocked] = BLOCKED_BIAS  # tied to the LM head's bias
    model.save_pretrained(out)
    make_processor(image_size=384, max_length=512).save_pretrained(out)
    return out


def build_story(out: Path, seed: int = 0, layers: int | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.initialization import no_init_weights

    from worker.tiny_models.story import SPECIAL_TOKENS, _make_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _make_tokenizer()
    endoftext, _, im_end = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    depth = layers or QWEN_LAYERS
    # Qwen/Qwen2.5-1.5B-Instruct's config.json; only the special ids are the tiny tokenizer's.
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=depth,
        num_attention_heads=12,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        use_sliding_window=False,
        max_window_layers=min(21, depth),
        tie_word_embeddings=True,
        initializer_range=0.02,
        attention_dropout=0.0,
        bos_token_id=endoftext,
        eos_token_id=im_end,
    )
    words = torch.tensor(story_word_ids(tokenizer))
    with _seeded(seed), torch.no_grad():
        # Built in bf16, as the checkpoint is stored, and initialised once (transformers' init, not torch's
        # first and then transformers'), skipping the 233M-value embedding that is set here: 4x quicker.
        with no_init_weights():
            model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
        embeddings = model.get_input_embeddings().weight  # tied: also the LM head
        embeddings.zero_()
        embeddings[words] = (torch.randn(len(words), config.hidden_size) * STORY_EMBED_STD).to(embeddings.dtype)
        embeddings._is_hf_initialized = True  # init_weights() leaves it alone
        model.init_weights()
        if not 0.015 < model.model.layers[0].mlp.up_proj.weight.float().std() < 0.025:
            raise RuntimeError("transformers did not initialise the story model's weights")
        model.model.norm.weight.fill_(-1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(LAYER_GAIN)
            layer.mlp.down_proj.weight.mul_(LAYER_GAIN)
    # Qwen2.5-Instruct's generation_config.json (the stage overrides temperature and top_p).
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.1,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_speech(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    from worker.tiny_models.speech import MMS_ENG_SYMBOLS, TOKENIZER_SETTINGS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.json"
    vocab = {ch: i for i, ch in enumerate(MMS_ENG_SYMBOLS)}
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    VitsTokenizer(vocab_file=str(vocab_file), **TOKENIZER_SETTINGS).save_pretrained(out)
    with _seeded(seed):
        model = VitsModel(VitsConfig(vocab_size=len(MMS_ENG_SYMBOLS), pad_token_id=0, **MMS_TTS_ENG)).eval()
    # Generating, VITS applies its duration flows backwards and this affine one last:
    # log_duration = (x - translate) * exp(-log_scale). A large log_scale squashes whatever the random
    # flows produce (x within a few units) to ~0, and translate puts log FRAMES_PER_TOKEN on top.
    last = model.duration_predictor.flows[0]
    with torch.no_grad():
        last.log_scale.fill_(5.0)
        last.translate.fill_(-math.log(FRAMES_PER_TOKEN) * math.exp(5.0))
    model.save_pretrained(out)
    return out


def build_full_size(out: str | Path, seed: int = 0, layers: int | None = None) -> Path:
    """Write out/caption, out/story and out/speech at full width (`layers`: every transformer's depth)."""
    if layers is not None and layers < 1:
        raise ValueError("layers must be at least 1")
    out = Path(out)
    build_caption(out / "caption", seed, layers)
    build_story(out / "story", seed, layers)
    build_speech(out / "speech", seed)
    return out
