"""A model-free stand-in for the narration Engine (worker/engine/pipeline.py), for the control-plane
bench (worker/control_bench.py): it loads nothing and runs each stage in microseconds, so a worker
using it costs only what the job lifecycle costs (Redis, storage, the broker).

It keeps the Engine's interface as the worker uses it: `batch_size`, `device`, `load()`,
`style_problem(style)`, `narrate_batch(images, words=, seeds=, on_progress=, encode=, styles=, languages=)`,
which reports each stage the way the real pipeline does (caption, story, speech, each with the
previous stage's results), and `encode(narrations)`, which fills in each MP3 afterwards. Its
narrations are the real Narration records, with a story of the requested length, word timings
(the subtitles) and a second of silent MP3 frames, so the job records, subtitles and uploads are
about the size a real job's are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from worker.engine.pipeline import CPU_BATCH_SIZE, Narration
from worker.engine.subtitles import WordTiming

# One MPEG-1 Layer III frame (32 kbit/s, 44.1 kHz, mono) whose side information is all zeros:
# players decode it as 1152 samples of silence.
SILENT_FRAME = b"\xff\xfb\x10\xc0" + bytes(100)
FRAME_SECONDS = 1152 / 44100
FRAMES = 40  # about a second
SAMPLE_RATE = 44100  # the silent MP3's
DEFAULT_WORDS = 40  # STORY_WORDS' default, for a job that names no length
VOCABULARY = ("the", "quiet", "light", "falls", "on", "a", "small", "garden", "where", "nothing", "moves", "today")

ProgressCallback = Callable[[str, list[dict]], None]


def _story(length: int, seed: int | None) -> str:
    offset = seed or 0
    return " ".join(VOCABULARY[(offset + i) % len(VOCABULARY)] for i in range(length)).capitalize() + "."


def _word_timings(story: str, seconds: float) -> list[WordTiming]:
    words = story.split()
    step = seconds / max(1, len(words))
    return [WordTiming(word.strip("."), i * step, (i + 1) * step, ref=i) for i, word in enumerate(words)]


class NoopEngine:
    def __init__(self, settings) -> None:
        self.settings = settings
        # What Engine.device would be on this machine without a GPU (ENCODE_IN_BACKGROUND=auto reads it).
        self.device = torch.device("cpu")

    @property
    def batch_size(self) -> int:
        return self.settings.worker_batch_size or CPU_BATCH_SIZE

    def load(self) -> dict[str, float]:
        return {"noop": 0.0}

    def style_problem(self, style: str | None) -> str | None:
        return None  # every style is served: nothing is loaded per style

    def narrate_batch(
        self,
        images: Sequence,
        words: int | Sequence[int | None] | None = None,
        seeds: Sequence[int | None] | None = None,
        sample: bool = True,
        on_progress: ProgressCallback | None = None,
        styles: Sequence[str | None] | None = None,
        encode: bool = True,
        languages: Sequence[str | None] | None = None,
    ) -> list[Narration]:
        n = len(images)
        lengths: list = list(words) if isinstance(words, (list, tuple)) else [words] * n
        seed_list = list(seeds) if seeds is not None else [None] * n
        rows = [len(lengths), len(seed_list)] + [len(r) for r in (styles, languages) if r is not None]
        if any(count != n for count in rows):
            raise ValueError(f"{n} images but {len(seed_list)} seeds and {len(lengths)} story lengths")
        notify = on_progress or (lambda stage, fields: None)
        notify("caption", [{} for _ in range(n)])
        captions = [f"a small garden in quiet light ({i + 1} of {n})" for i in range(n)]
        notify("story", [{"caption": caption} for caption in captions])
        stories = [_story(int(length or DEFAULT_WORDS), seed) for length, seed in zip(lengths, seed_list, strict=True)]
        notify("speech", [{"story": story} for story in stories])
        seconds = FRAMES * FRAME_SECONDS
        timings = {"caption": 0.0, "story": 0.0, "speech": 0.0}
        narrations = [
            Narration(
                caption=caption,
                story=story,
                mp3=b"",
                audio_seconds=seconds,
                sample_rate=SAMPLE_RATE,
                timings=dict(timings),
                words=_word_timings(story, seconds),
                speech=True,  # anything but None: Engine.encode's mark of a narration still to encode
            )
            for caption, story in zip(captions, stories, strict=True)
        ]
        return self.encode(narrations) if encode else narrations

    @staticmethod
    def encode(narrations: list[Narration]) -> list[Narration]:
        """Each narration's MP3, in place, as Engine.encode does."""
        for narration in narrations:
            if narration.speech is None:
                continue  # already encoded
            narration.mp3, narration.speech = SILENT_FRAME * FRAMES, None
            narration.timings["encode"] = 0.0
        return narrations
