"""Offline, random-weight stand-ins for the three real models, for tests and benchmarks.

Each builder makes a few-MB model of the real class and saves it with save_pretrained, so the
stages load it through exactly the from_pretrained code they use for the hub models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def build_all(out: str | Path, seed: int = 0, languages: Sequence[str] = ()) -> Path:
    """Write out/caption, out/story and out/speech (English), and out/speech-<code> for each of
    `languages` (ISO 639-3 codes); the same seed gives the same files."""
    from worker.tiny_models import caption, speech, story

    out = Path(out)
    caption.build(out / "caption", seed)
    story.build(out / "story", seed)
    speech.build(out / "speech", seed)
    for code in languages:
        speech.build(out / f"speech-{code}", seed, language=code)
    return out


__all__ = ["build_all"]
