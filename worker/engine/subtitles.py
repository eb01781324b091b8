"""Word timings: when each spoken word starts and ends in the narration, and WebVTT made from them.

VITS decides how many spectrogram frames each input token lasts (its duration predictor's output
-> exp -> * length_scale -> ceil); each frame becomes `hop` waveform samples (the product of the
vocoder's upsample rates). transformers' VitsModel does not return those durations, so DurationTap
hooks the duration predictor and redoes that arithmetic on its output: the same operations on the
same tensors, so the frames are exactly the ones VITS expanded (SpeechStage checks that they add up
to the waveform's length). The tokenizer is one token per character, with a blank token before,
between and after the characters when `add_blank` is set, so token positions map back to the
characters of the chunk, and characters to words.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from worker.engine.speech_text import DEFAULT_ALLOWED, normalize_text
from worker.engine.words import split_words, word_spans


@dataclass(frozen=True)
class WordTiming:
    text: str  # as spoken: the normalised word ("twelve" for "12")
    start: float  # seconds from the start of the audio
    end: float
    ref: int = 0  # which word of the story as written (words.split_words(story)) it was spoken for


class DurationTap:
    """While open, records the frames of every token for each forward pass of `model`."""

    def __init__(self, model, speaking_rate: float | None = None):
        self.model = model
        rate = model.speaking_rate if speaking_rate is None else speaking_rate
        self.length_scale = 1.0 / rate  # as VitsModel.forward computes it
        self.calls: list = []  # (batch, tokens) int64 arrays, one per forward pass
        self._handle = None

    def _hook(self, module, args, kwargs, output):
        import torch

        mask = args[1] if len(args) > 1 else kwargs["padding_mask"]
        duration = torch.ceil(torch.exp(output) * mask * self.length_scale)  # VitsModel.forward, verbatim
        self.calls.append(duration[:, 0, :].long().cpu().numpy())

    def __enter__(self) -> DurationTap:
        self._handle = self.model.duration_predictor.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def token_spans(chunk: str, n_tokens: int) -> list[int] | None:
    """The token index of each character of `chunk`, or None when the tokens are not one per
    character (a phonemizing checkpoint, say)."""
    if n_tokens == 2 * len(chunk) + 1:  # add_blank: blank c0 blank c1 ... blank
        return [2 * i + 1 for i in range(len(chunk))]
    if n_tokens == len(chunk):
        return list(range(len(chunk)))
    return None


def chunk_words(
    chunk: str, frames: Sequence[int] | None, seconds_per_frame: float, chunk_seconds: float
) -> list[tuple[str, float, float]]:
    """(word, start, end) relative to the chunk's start: from the first frame of a word's first
    character to the last frame of its last one. Without usable frames, the chunk's time is shared
    out by characters (an estimate, but the words still line up with the chunk)."""
    positions = token_spans(chunk, len(frames)) if frames is not None else None
    if positions is None:
        frames = [1] * len(chunk)
        positions = list(range(len(chunk)))
        seconds_per_frame = chunk_seconds / max(len(chunk), 1)
    edges = [0]
    for count in frames:
        edges.append(edges[-1] + int(count))
    words = []
    for start, end in word_spans(chunk):  # a script without spaces: a word per character
        first, last = positions[start], positions[end - 1]
        words.append((chunk[start:end], edges[first] * seconds_per_frame, edges[last + 1] * seconds_per_frame))
    return words


def align(
    story: str,
    spoken: Sequence[str],
    allowed: Iterable[str] = DEFAULT_ALLOWED,
    speakable: Callable[[str], str] | None = None,
) -> list[int]:
    """For each spoken word, the index of the written word (split_words(story)) it belongs to.

    Each written word is spelled out on its own ("12" -> "twelve", "$1.50" -> five words; with
    `speakable`, that is how the voice's language spells it), the result is matched against what
    was spoken, and the few words that only the whole text's context explains ("3 – 5" -> "three
    to five") go to the written words between their matched neighbours. The result never
    decreases, so one written word's spoken words are contiguous."""
    written = split_words(story)
    speakable = speakable or (lambda token: normalize_text(token, allowed))
    forms = [(k, w) for k, token in enumerate(written) for w in split_words(speakable(token))]
    refs: list[int | None] = [None] * len(spoken)
    matcher = difflib.SequenceMatcher(None, [w for _, w in forms], list(spoken), autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for j in range(size):
            refs[b + j] = forms[a + j][0]
    j = 0
    while j < len(refs):
        if refs[j] is not None:
            j += 1
            continue
        end = j
        while end < len(refs) and refs[end] is None:
            end += 1
        before = refs[j - 1] if j else -1
        after = refs[end] if end < len(refs) else len(written)
        lo, hi = before + 1, after - 1  # the written words between the matched neighbours
        if lo > hi:  # none between: the neighbour's own spelling said more than it alone does
            lo = hi = max(before, 0) if before >= 0 else max(min(after, len(written) - 1), 0)
        for n in range(j, end):
            refs[n] = lo + (n - j) * (hi - lo + 1) // (end - j)
        j = end
    return [int(r) for r in refs]  # type: ignore[arg-type]


def _stamp(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(words: Sequence[WordTiming]) -> str:
    """WebVTT with one cue per written word: usually one spoken word, a short phrase where one
    written word is several spoken ones ("$5" -> "five dollars"). The cue id `w<n>` is that
    written word's index in split_words(story), which a page uses to highlight the word as written."""
    lines = ["WEBVTT", ""]
    group: list[WordTiming] = []
    for word in list(words) + [None]:  # type: ignore[list-item]
        if group and (word is None or word.ref != group[0].ref):
            text = " ".join(w.text for w in group)
            lines += [f"w{group[0].ref}", f"{_stamp(group[0].start)} --> {_stamp(group[-1].end)}", _escape(text), ""]
            group = []
        if word is not None:
            group.append(word)
    return "\n".join(lines)
