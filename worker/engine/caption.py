"""Caption stage: BLIP (BlipForConditionalGeneration + BlipProcessor) over a batch of RGB images.

transformers 5 has no image-to-text pipeline, so the stage calls the processor and generate()
itself. The model loads once per stage (lazily, under a lock) and is reused for every batch.
"""

from __future__ import annotations

import re
import threading

import torch
from PIL import Image

from worker.engine.batching import run_split
from worker.engine.devices import resolve_device, resolve_dtype

FALLBACK_CAPTION = "A photograph"

# BLIP-base learnt "arafed", "araffe", "arafly", "arafe"... from noisy web alt-text; never a real word.
_ARTIFACT = re.compile(r"\baraf\w*\b", re.IGNORECASE)
_BRACKET_TOKEN = re.compile(r"\[\w+\]")  # [unk], [sep] and friends if a tokenizer leaves them
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)
_AN_BEFORE_CONSONANT = re.compile(r"\b([Aa])n\s+(?=[bcdfgjklmnpqrstvwxyz])", re.IGNORECASE)


def clean_caption(text: str) -> str:
    """Drop BLIP artifacts, repeated words and stray spacing; capitalise; never return ''."""
    text = _BRACKET_TOKEN.sub(" ", text or "")
    text = _ARTIFACT.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _REPEATED_WORD.sub(r"\1", text)
    # "an arafed man" -> "an man" once the artifact is gone; restore the article.
    text = _AN_BEFORE_CONSONANT.sub(lambda m: m.group(1) + " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)  # BERT decoding leaves "dog , cat"
    text = re.sub(r"\s*'\s*s\b", "'s", text)  # and "dog ' s"
    text = text.strip(" ,.;:-'\"")
    if not re.search(r"[A-Za-z]", text):
        return FALLBACK_CAPTION
    return text[0].upper() + text[1:]


class CaptionStage:
    """Images in, cleaned captions out; one generate() call per batch."""

    def __init__(
        self,
        model: str,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 3,
        setting: str = "CAPTION_MODEL",
        max_batch: int | None = None,
    ):
        self.model_name = str(model)
        self.setting = setting  # named in the error when the model cannot be loaded
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.max_batch = max_batch  # photos per generate(); None: the whole batch at once
        self.model = None
        self.processor = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> CaptionStage:
        with self._lock:  # two threads asking at once must not load the weights twice
            if self.model is not None:
                return self
            from transformers import BlipForConditionalGeneration, BlipProcessor

            from worker.engine.hub import load_pretrained

            def from_pretrained(local_files_only: bool):
                # BLIP is small: quantization (QUANTIZE) is for the story model only.
                processor = BlipProcessor.from_pretrained(self.model_name, local_files_only=local_files_only)
                model = BlipForConditionalGeneration.from_pretrained(
                    self.model_name, dtype=self.dtype, local_files_only=local_files_only
                )
                return processor, model

            processor, model = load_pretrained(self.setting, self.model_name, from_pretrained)
            self.processor, self.model = processor, model.to(self.device).eval()
        return self

    def preprocess(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        batch = self.processor(images=rgb, return_tensors="pt")
        return {"pixel_values": batch["pixel_values"].to(self.device, self.dtype)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.generate(
                **batch, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, do_sample=False
            )

    def postprocess(self, ids: torch.Tensor) -> list[str]:
        raw = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [clean_caption(text) for text in raw]

    def __call__(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        self.load()
        # BLIP's text decoder does not take transformers' static cache (its cross-attention writes past
        # the cache), so captions decode eagerly; a batch too big for the GPU runs in halves.
        return run_split(lambda part: self.postprocess(self.forward(self.preprocess(part))), images, self.max_batch)
