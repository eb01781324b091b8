"""A random-weight VITS text-to-speech model shaped like facebook/mms-tts-eng (or another MMS-TTS
language's), built offline.

Same classes (VitsModel + VitsTokenizer), same tokenizer settings and character vocabulary as the
real checkpoint, so SpeechStage loads it through the very same from_pretrained code; only the
sizes are shrunk so it is about 100 KB and synthesises in milliseconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

# The MMS-TTS-eng character vocabulary (38 symbols). "k" is id 0 because MMS uses it as the blank
# token interspersed between characters (tokenizer pad_token "k"); the digits 0-6, "_" and the en
# dash are in the real vocab too, which is why normalisation must spell numbers out itself rather
# than rely on the vocab filter.
MMS_ENG_SYMBOLS = (
    "k",
    "'",
    "x",
    "y",
    "n",
    "d",
    "h",
    "e",
    "s",
    "w",
    "–",
    "3",
    "c",
    "z",
    "-",
    "1",
    "j",
    "l",
    "i",
    " ",
    "f",
    "v",
    "o",
    "0",
    "b",
    "r",
    "a",
    "4",
    "2",
    "m",
    "_",
    "p",
    "q",
    "u",
    "t",
    "5",
    "6",
    "g",
)

# The real model's tokenizer_config.json settings: no phonemizer, no uroman, blanks between chars.
TOKENIZER_SETTINGS = dict(
    language="eng",
    add_blank=True,
    normalize=True,
    phonemize=False,
    is_uroman=False,
    pad_token="k",
    unk_token="<unk>",
)


def tiny_config(vocab_size: int):
    from transformers import VitsConfig

    # Every width is tiny (the whole model is about 100 KB). The hop is 8*8 = 64 samples per frame
    # instead of MMS's 256: the audio is still 16 kHz but 4x shorter, which keeps the vocoder (the
    # costly part on a CPU) quick in tests that speak a 300-word story.
    return VitsConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=8,
        spectrogram_bins=17,
        upsample_initial_channel=16,
        upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        duration_predictor_filter_channels=16,
        duration_predictor_num_flows=1,
        depth_separable_num_layers=1,
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        sampling_rate=16_000,
        pad_token_id=0,
    )


# Voices of other languages (--languages): the English vocabulary plus the letters a language
# writes beyond a-z, and is_uroman for languages MMS speaks from romanized text (their checkpoints'
# vocabulary is Latin letters, like English's).
EXTRA_LETTERS = {"deu": "äöüß", "fra": "àâçéèêëîïôùûüÿœ", "spa": "áéíñóúü", "por": "áâãàçéêíóôõú"}
ROMANIZED = frozenset(
    "amh ara ben bul cmn ell fas guj heb hin jpn kan kor mal mar pan rus tam tel tha ukr urd yue".split()
)


def build(out: Path, seed: int = 0, language: str = "eng") -> Path:
    """Write a random-weight VitsModel + VitsTokenizer for `language` to `out`; identical files for a seed."""
    import torch
    from transformers import VitsModel, VitsTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    symbols = MMS_ENG_SYMBOLS + tuple(EXTRA_LETTERS.get(language, ""))
    vocab_file = out / "vocab.json"
    vocab_file.write_text(
        json.dumps({ch: i for i, ch in enumerate(symbols)}, ensure_ascii=False, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    settings = {**TOKENIZER_SETTINGS, "language": language, "is_uroman": language in ROMANIZED}
    tokenizer = VitsTokenizer(vocab_file=str(vocab_file), **settings)
    tokenizer.save_pretrained(out)

    # fork_rng: seeding must not disturb the caller's global RNG state (tests build mid-session).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VitsModel(tiny_config(len(symbols)))
    model.eval()
    model.save_pretrained(out)
    return out
