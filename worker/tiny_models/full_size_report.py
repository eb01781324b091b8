"""What the full-size random models do: one photo through the Engine's three stages, counted.

report() loads the models through an Engine (Settings overrides, as a worker would), captions a
synthetic photo, writes the story at the engine's sampling settings and speaks it, and returns the
counts the bench relies on: caption and story tokens generated (30 and words*2+32 when nothing stops
early), the characters that reach speech, the audio seconds, and the probability mass the story
model ever puts on the rows zeroed in full_size.py. Also parameter counts and sizes on disk.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

PARTS = ("caption", "story", "speech")


def engine_for(models: str | Path, device: str = "cpu", **overrides):
    from shared.settings import Settings
    from worker.engine import Engine

    models = Path(models)
    return Engine(
        Settings(
            caption_model=str(models / "caption"),
            story_model=str(models / "story"),
            speech_model=str(models / "speech"),
            device=device,
            **overrides,
        )
    )


@functools.cache
def speech_stage(engine):
    """The engine's speech stage, but in float32 whatever DTYPE says, as the Engine keeps it under
    DTYPE=auto: VITS's spline flow fails in bf16 ("Discriminant has negative values")."""
    if engine.settings.dtype == "auto":
        return engine.speech
    from worker.engine.speech import SpeechStage

    return SpeechStage(engine.settings.speech_model, device=str(engine.device))


def size_on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def zero_row_mass(stage, batch, new_ids, temperature: float) -> float:
    """The largest probability, at `temperature`, that any generated position gave to the ids whose
    (tied) output row is zero. Their logits are exactly 0 whatever the hidden state, so each adds exp(0)
    to the softmax's sum; only the live rows' logits need computing (151,936 per position would not)."""
    import torch

    model = stage.model
    rows = model.get_output_embeddings().weight
    zero = rows.abs().sum(dim=1) == 0
    prompt = batch["input_ids"].shape[1]
    with torch.inference_mode():
        ids = torch.cat([batch["input_ids"], new_ids], dim=1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(new_ids)], dim=1)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, prompt - 1 : -1]
        live = (hidden @ rows[~zero].T).float() / temperature
        zeros = torch.full_like(live[..., :1], math.log(int(zero.sum())))  # log(n * exp(0))
        log_mass = zeros[..., 0] - torch.logsumexp(torch.cat([live, zeros], dim=-1), dim=-1)
        return float(log_mass.exp().max())


def report(
    models: str | Path, device: str = "cpu", words: int = 40, seed: int = 0, dtype: str = "auto", engine=None
) -> dict:
    """Run one synthetic photo through the models in `models` (caption/, story/, speech/) and count.
    `dtype`: the DTYPE setting for caption and story (auto: what a worker uses; bfloat16 is quicker on a
    CPU); speech stays float32. `engine`: one made by engine_for already, to save loading the models."""
    from worker.bench import synthetic_photo

    models = Path(models)
    engine = engine or engine_for(models, device, dtype=dtype)
    settings, out, seconds = engine.settings, {}, {}

    caption = engine.caption.load()
    start = time.perf_counter()
    ids = caption.forward(caption.preprocess([synthetic_photo(seed)]))
    captions = caption.postprocess(ids)
    seconds["caption"] = time.perf_counter() - start
    pad = caption.model.config.text_config.pad_token_id
    out["caption"], out["caption_tokens"] = captions[0], int((ids[0, 1:] != pad).sum())  # [0] is [DEC]

    story = engine.story.load()
    limit = int(words) * 2 + 32  # what StoryStage allows a story of `words`
    start = time.perf_counter()
    batch = story.preprocess(captions, words)
    new_ids = story.forward(
        batch, seed=seed, temperature=settings.story_temperature, top_p=settings.story_top_p, max_new_tokens=limit
    )
    stories = story.postprocess(new_ids, captions)
    seconds["story"] = time.perf_counter() - start
    eos = story.model.generation_config.eos_token_id
    ends = {story.tokenizer.pad_token_id, *(eos if isinstance(eos, list) else [eos])}
    out["story_limit"] = limit
    out["story_tokens"] = sum(t not in ends for t in new_ids[0].tolist())
    out["story_raw"] = story.tokenizer.decode(new_ids[0], skip_special_tokens=True)
    out["story"] = stories[0]
    out["zero_row_mass"] = zero_row_mass(story, batch, new_ids, settings.story_temperature)

    speech = speech_stage(engine).load()
    start = time.perf_counter()
    chunks = speech.preprocess(stories)
    spoken = speech.postprocess(chunks, speech.forward(chunks, seed=seed))
    seconds["speech"] = time.perf_counter() - start
    out["speech_chars"] = sum(len(chunk) for chunk in chunks.chunks)
    out["audio_seconds"] = spoken[0].seconds

    for part, stage in zip(PARTS, (caption, story, speech), strict=True):
        out[f"{part}_params"] = sum(p.numel() for p in stage.model.parameters())  # tied weights once
        out[f"{part}_bytes"] = size_on_disk(models / part)
        out[f"{part}_seconds"] = seconds[part]
    out["device"] = str(engine.device)
    out["dtype"] = str(engine.dtype).replace("torch.", "")
    return out


def format_report(r: dict) -> str:
    lines = [f"on {r['device']} ({r['dtype']}, speech float32), seconds of one cold run (compiling included):"]
    for part in PARTS:
        lines.append(
            f"  {part:<8}{r[f'{part}_params'] / 1e6:9.1f} M parameters {r[f'{part}_bytes'] / 1e6:9.1f} MB on disk"
            f" {r[f'{part}_seconds']:8.2f} s"
        )
    lines += [
        f"  caption: {r['caption_tokens']} tokens generated: {r['caption']!r}",
        f"  story: {r['story_tokens']} of {r['story_limit']} tokens generated; probability ever given to the"
        f" zeroed rows <= {r['zero_row_mass']:.1e}",
        f"  story after clean_story ({len(r['story'])} characters): {r['story']!r}",
        f"  speech: {r['speech_chars']} characters spoken, {r['audio_seconds']:.1f} s of audio",
    ]
    return "\n".join(lines)
