"""Speech stage: story text -> MMS-TTS (VITS) waveform -> MP3, one language's voice per stage.

The text is first romanized where the voice asks for it, spelled out and cut into sentence-sized
chunks (speech_text.py), every chunk of every text is synthesised as one padded batch, and each
text's chunks are joined again with short pauses.
"""

from __future__ import annotations

import io
import logging
import shutil
import threading
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from worker.engine.batching import run_split

# The text helpers are re-exported: callers and tests import them from worker.engine.speech.
from worker.engine.speech_text import (  # noqa: F401
    DEFAULT_ALLOWED,
    keep_only,
    normalize_text,
    number_words,
    ordinal_words,
    prepare,
    romanize,
    spell_out,
    split_sentences,
)
from worker.engine.subtitles import DurationTap, WordTiming, align, chunk_words

log = logging.getLogger(__name__)


@dataclass
class Speech:
    waveform: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int
    words: list[WordTiming] = field(default_factory=list)  # each spoken word's start and end

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


@dataclass
class SpeechBatch:
    """Chunks of every text in one flat list; owners[i] is the index of the text chunk i came from.
    forward() fills frames[i]: the VITS frames of each token of chunk i (None if unknown)."""

    chunks: list[str]
    owners: list[int]
    n_texts: int
    texts: list[str] = field(default_factory=list)
    frames: list = field(default_factory=list)


class SpeechStage:
    """MMS-TTS through VitsModel + VitsTokenizer; loads once (lazily, thread-safe), speaks in batches."""

    def __init__(
        self,
        model: str,
        device="cpu",
        dtype=None,
        max_chars: int = 200,
        max_batch: int = 32,
        pause_seconds: float = 0.25,
        empty_seconds: float = 0.5,
        seed: int | None = None,
        setting: str = "SPEECH_MODEL",
        language: str = "eng",
    ):
        self.model_name = str(model)
        self.setting = setting  # named in the error when the model cannot be loaded
        # The voice's ISO 639-3 code (shared/languages.py): English text is spelled out (numbers,
        # symbols); other languages keep their letters as written.
        self.language = language
        self.romanized = False  # the checkpoint's tokenizer asks for romanized input (is_uroman)
        self.device = device
        self.dtype = dtype
        self.max_chars = max_chars
        self.max_batch = max_batch  # chunks per forward pass: bounds memory on long stories
        self.pause_seconds = pause_seconds
        self.empty_seconds = empty_seconds
        self.seed = seed
        self.model = None
        self.tokenizer = None
        self.allowed: frozenset[str] = DEFAULT_ALLOWED
        self._load_lock = threading.Lock()
        # VITS samples noise from torch's global RNG, so seeded runs must not interleave.
        self._run_lock = threading.Lock()

    @property
    def sample_rate(self) -> int:
        self.load()
        return int(self.model.config.sampling_rate)

    def load(self) -> SpeechStage:
        if self.model is not None:
            return self
        with self._load_lock:
            if self.model is None:
                import torch
                from transformers import AutoTokenizer, VitsModel

                from worker.engine.hub import load_pretrained

                def from_pretrained(local_files_only: bool):
                    tokenizer = AutoTokenizer.from_pretrained(self.model_name, local_files_only=local_files_only)
                    model = VitsModel.from_pretrained(
                        self.model_name, dtype=self.dtype or torch.float32, local_files_only=local_files_only
                    )
                    return tokenizer, model

                tokenizer, model = load_pretrained(self.setting, self.model_name, from_pretrained)
                device = torch.device(self.device)
                model.to(device).eval()
                if device.type == "cuda" and model.dtype == torch.float32:
                    # TF32 matmuls and convolutions double VITS's speed on recent GPUs; the voice stays
                    # the same to the ear (bf16 would not: its spline flow fails on half precision).
                    torch.backends.cuda.matmul.allow_tf32 = True
                    torch.backends.cudnn.allow_tf32 = True
                # Speak only what this checkpoint's vocabulary holds (letters and the marks some
                # scripts write vowels with, space, ' and -); digits and odd symbols in the MMS vocab
                # are spelled out instead.
                self.allowed = frozenset(
                    ch
                    for ch in tokenizer.get_vocab()
                    if len(ch) == 1 and (ch.isalpha() or unicodedata.category(ch).startswith("M") or ch in " '-")
                )
                self.romanized = bool(getattr(tokenizer, "is_uroman", False))
                if self.romanized:
                    romanize("", self.language)  # uroman's tables load with the voice, not in a job
                self.tokenizer, self.model = tokenizer, model
        return self

    def spell(self, text: str) -> str:
        """Text as this voice reads it, sentence punctuation still in: romanized first where the
        checkpoint asks for it (Devanagari -> Latin letters), then spelled out (English) or prepared
        (other languages)."""
        if self.romanized:
            text = romanize(text, self.language)
        return spell_out(text) if self.language == "eng" else prepare(text)

    def speakable(self, text: str) -> str:
        """Only what this voice can say of `text` (subtitles align the written words with it)."""
        return keep_only(self.spell(text), self.allowed, fold=self.language != "eng")

    def preprocess(self, texts: list[str]) -> SpeechBatch:
        self.load()
        chunks, owners = [], []
        for index, text in enumerate(texts):
            for chunk in split_sentences(self.spell(text or ""), self.max_chars):
                chunk = keep_only(chunk, self.allowed, fold=self.language != "eng")
                if chunk:
                    chunks.append(chunk)
                    owners.append(index)
        return SpeechBatch(chunks, owners, len(texts), texts=list(texts))

    def forward(self, batch: SpeechBatch, seed: int | None = None) -> list[np.ndarray]:
        """One waveform per chunk. Chunks are sorted by length so each padded batch wastes little."""
        import torch

        from worker.engine.devices import seeded

        self.load()
        seed = self.seed if seed is None else seed
        device = torch.device(self.device)
        waves: list[np.ndarray | None] = [None] * len(batch.chunks)
        batch.frames = [None] * len(batch.chunks)
        hop = int(np.prod(self.model.config.upsample_rates))  # waveform samples per frame
        order = sorted(range(len(batch.chunks)), key=lambda i: len(batch.chunks[i]))

        def run(ids: list[int]) -> list[int]:
            inputs = self.tokenizer([batch.chunks[i] for i in ids], padding=True, return_tensors="pt")
            with torch.inference_mode(), DurationTap(self.model) as tap:
                out = self.model(**inputs.to(device))
            lengths = out.sequence_lengths.tolist()
            rows = out.waveform.float().cpu().numpy()
            masks = inputs["attention_mask"].bool().cpu().numpy()
            for row, i, n, frames, mask in zip(rows, ids, lengths, tap.calls[-1], masks, strict=True):
                waves[i] = row[:n].astype(np.float32)  # drop the padding tail
                batch.frames[i] = frames[mask].tolist()  # this chunk's tokens, not the padding
                if sum(batch.frames[i]) * hop != n:  # a VITS that computes durations differently
                    log.warning("token durations do not add up to the waveform; word times are estimated")
                    batch.frames[i] = None
            return ids

        with self._run_lock, seeded(seed, device):
            # max_batch chunks per forward pass, fewer when a pass runs out of GPU memory.
            run_split(run, order, self.max_batch)
        return waves

    def postprocess(self, batch: SpeechBatch, waves: list[np.ndarray]) -> list[Speech]:
        rate = self.sample_rate
        hop = int(np.prod(self.model.config.upsample_rates))
        pause = np.zeros(int(rate * self.pause_seconds), dtype=np.float32)
        parts: list[list[np.ndarray]] = [[] for _ in range(batch.n_texts)]
        words: list[list[tuple[str, float, float]]] = [[] for _ in range(batch.n_texts)]
        frames = batch.frames or [None] * len(waves)
        for owner, chunk, wave, chunk_frames in zip(batch.owners, batch.chunks, waves, frames, strict=True):
            parts[owner] += [pause, wave] if parts[owner] else [wave]
            # The chunk starts after every earlier part of its text, the pauses included.
            offset = (sum(map(len, parts[owner])) - len(wave)) / rate
            words[owner] += [
                (w, offset + start, offset + end)
                for w, start, end in chunk_words(chunk, chunk_frames, hop / rate, len(wave) / rate)
            ]
        empty = np.zeros(int(rate * self.empty_seconds), dtype=np.float32)
        texts = batch.texts or [""] * batch.n_texts
        out = []
        for part, spoken, text in zip(parts, words, texts, strict=True):
            refs = align(text or "", [w for w, _, _ in spoken], speakable=self.speakable)
            timings = [WordTiming(w, start, end, ref) for (w, start, end), ref in zip(spoken, refs, strict=True)]
            out.append(Speech(np.concatenate(part) if part else empty.copy(), rate, timings))
        return out

    def __call__(self, texts: list[str], seed: int | None = None) -> list[Speech]:
        batch = self.preprocess(list(texts))
        return self.postprocess(batch, self.forward(batch, seed=seed))


def encode_mp3(speech: Speech, bitrate: str = "64k") -> bytes:
    """Float waveform -> 16-bit PCM -> MP3 through pydub (which runs the ffmpeg binary)."""
    from pydub import AudioSegment

    from worker.engine.devices import ConfigError

    if shutil.which(AudioSegment.converter) is None:  # pydub picks "ffmpeg" (or avconv) at import
        raise ConfigError("ffmpeg not found; install it (apt-get install ffmpeg)")
    wave = np.nan_to_num(np.asarray(speech.waveform, dtype=np.float32).reshape(-1))
    if wave.size == 0:  # an empty MP3 does not decode; a tenth of a second of silence does
        wave = np.zeros(speech.sample_rate // 10, dtype=np.float32)
    pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2")
    segment = AudioSegment(pcm.tobytes(), sample_width=2, frame_rate=speech.sample_rate, channels=1)
    buffer = io.BytesIO()
    segment.export(buffer, format="mp3", bitrate=bitrate)
    return buffer.getvalue()
