"""A random-weight BLIP captioner of the real class, small enough to build offline in a second.

It is saved with save_pretrained so CaptionStage loads it through exactly the same
BlipForConditionalGeneration / BlipProcessor.from_pretrained calls as Salesforce's model.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
# The real BLIP tokenizer is BERT's uncased vocabulary plus [DEC] (generation start) and [ENC].
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "a an the of on in with and at by near two three dog dogs cat cats man woman child people "
    "sitting standing running lying walking playing holding looking red blue green white black "
    "brown small large old young tree trees street beach field room table bed car bike boat "
    "water grass snow sky city house window road park mountain picture photo close up view "
    "there is are top next to front it its his her their some group"
).split()
EXTRA = ["[DEC]", "[ENC]"]


def make_vocab() -> list[str]:
    # Single letters and ## pieces let WordPiece spell any lowercase word instead of [UNK].
    letters = list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    return SPECIAL + list(dict.fromkeys(WORDS + letters + list(".,'-"))) + EXTRA


def make_processor(image_size: int = IMAGE_SIZE, max_length: int = 64):
    """BLIP's processor over the small vocabulary: BERT's WordPiece plus [DEC]/[ENC], CLIP's normalisation."""
    from transformers import BertTokenizer, BlipImageProcessorPil, BlipProcessor

    # transformers 5's BertTokenizer takes the vocabulary as a dict (vocab_file is ignored).
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(make_vocab())},
        do_lower_case=True,
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
        model_max_length=max_length,
    )
    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build(out: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab()
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            projection_dim=32,
            bos_token_id=vocab.index("[DEC]"),
            pad_token_id=vocab.index("[PAD]"),
            sep_token_id=vocab.index("[SEP]"),
            eos_token_id=vocab.index("[SEP]"),
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=16,
            projection_dim=32,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    # Random init gives near-constant logits; widen them so greedy/beam decoding varies with the image.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.save_pretrained(out)
    make_processor().save_pretrained(out)
    return out
