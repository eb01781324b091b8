"""The narration engine: photo -> caption -> story -> speech -> MP3, in-process.

One Engine per process holds the three stages; each stage loads its model on first use, so
importing or constructing an Engine is cheap and safe in any process. Settings that cannot work
on this machine (QUANTIZE on a CPU, a missing GPU) fail at construction, before any job runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from shared.settings import Settings, get_settings
from worker.engine.devices import ConfigError, check_quantize, resolve_device, resolve_dtype
from worker.once import Once

ProgressCallback = Callable[[str, dict], None]
# WORKER_BATCH_SIZE when unset. On a GPU decoding is bound by per-step overhead, so a batch of 128 costs
# little more than a batch of 8; on a CPU the cost grows with the batch and 8 keeps a job's wait short.
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 128, 8
SPEECH_CHUNKS_GPU = 128  # VITS chunks per forward pass on a GPU (SpeechStage's default, 32, on a CPU)
BatchProgressCallback = Callable[[str, list[dict]], None]


@dataclass
class Narration:
    caption: str
    story: str
    mp3: bytes = field(repr=False)
    audio_seconds: float
    sample_rate: int
    timings: dict[str, float]
    # When each spoken word starts and ends in the MP3 (worker/engine/subtitles.py: WordTiming).
    words: list = field(default_factory=list, repr=False)
    # The waveform while the MP3 is still to be encoded (narrate_batch(encode=False)); None after.
    speech: object = field(default=None, repr=False)

    def to_json(self) -> dict:
        """Everything but the audio and word timings, ready for json.dumps."""
        out = asdict(self)
        del out["mp3"], out["words"], out["speech"]
        return out


def _groups(keys: Iterable[Hashable]) -> dict[Hashable, list[int]]:
    # A batched sampler shares one random stream, so each distinct seed gets its own stage call
    # (and each story length, which is part of the prompt); in the usual case (no seeds, one
    # length) that is still one call for the whole batch.
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups


def _check_local_model(name: str, value: str) -> None:
    # A path that does not exist would otherwise be taken for a hub id and fail in the first job.
    looks_local = value.startswith(("/", "./", "../", "~")) or os.path.isabs(value)
    if looks_local and not Path(value).expanduser().is_dir():
        raise ConfigError(f"{name}={value}: no such model folder.")


class Engine:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.device = resolve_device(self.settings.device)
        self.dtype = resolve_dtype(self.settings.dtype, self.device)
        check_quantize(self.settings.quantize, self.device)
        from shared.languages import LanguageError, from_settings

        try:
            self.languages = from_settings(self.settings)  # LANGUAGES (else English from SPEECH_MODEL)
        except LanguageError as exc:
            raise ConfigError(str(exc)) from None
        for name in ("caption_model", "story_model"):
            _check_local_model(name.upper(), getattr(self.settings, name))
        for code, location in self.languages.locations.items():
            _check_local_model(f"LANGUAGES {code}" if self.settings.languages else "SPEECH_MODEL", location)
        self._stages = Once()
        # The loaded voices, least recently used first: at most MAX_VOICES stay in memory.
        self._voices: OrderedDict[str, object] = OrderedDict()
        self._voices_lock = threading.Lock()

    @property
    def batch_size(self) -> int:
        """The most jobs one run takes (WORKER_BATCH_SIZE, or the default for this device)."""
        default = GPU_BATCH_SIZE if self.device.type == "cuda" else CPU_BATCH_SIZE
        return self.settings.worker_batch_size or default

    @property
    def caption(self):
        from worker.engine.caption import CaptionStage

        # Quantization is for the story model, the only one big enough to need it.
        return self._stages(
            "caption",
            lambda: CaptionStage(
                self.settings.caption_model, device=self.device, dtype=self.dtype, max_batch=self.batch_size
            ),
        )

    @property
    def story(self):
        from worker.engine.story import StoryStage

        s, styles = self.settings, self.styles
        return self._stages(
            "story",
            lambda: StoryStage(
                s.story_model,
                adapter=s.story_adapter,
                device=str(self.device),
                dtype=self.dtype,
                quantize=s.quantize,
                cache_dir=s.model_cache_dir,
                styles=styles.locations,
                default_style=styles.default,
                static_cache={"auto": None, "on": True, "off": False}[s.static_cache],
                max_batch=self.batch_size,
            ),
        )

    @property
    def styles(self):
        """STORY_STYLES parsed (shared/styles.py); a bad value fails the story model's load, as a bad
        STORY_ADAPTER does (an AdapterError: the worker records it and exits)."""
        from shared.styles import StyleError, from_settings
        from worker.engine.adapters import AdapterError

        def parse():
            try:
                return from_settings(self.settings)
            except StyleError as exc:
                raise AdapterError(str(exc)) from None

        return self._stages("styles", parse)

    def style_problem(self, style: str | None) -> str | None:
        """Why a job of this style cannot run here (a message for the job's `error`), or None."""
        styles = self.styles
        if style and style not in styles.locations:
            served = f"it serves {', '.join(styles.names)}" if styles.names else "it serves no styles"
            return f"the story style {style!r} is not served by this worker ({served}; see STORY_STYLES)"
        return None

    def language_problem(self, language: str | None) -> str | None:
        """Why a job in this language cannot run here (a message for the job's `error`), or None."""
        if language and language not in self.languages.locations:
            served = ", ".join(self.languages.codes)
            return f"the language {language!r} is not served by this worker (it serves {served}; see LANGUAGES)"
        return None

    @property
    def speech(self):
        """The default language's voice."""
        return self.voice(None)

    def voice(self, language: str | None):
        """The SpeechStage of a language (None: the default), built on first use and kept among the
        MAX_VOICES most recently used; its model loads on its first load() (the default's at start)."""
        from worker.engine.speech import SpeechStage

        code = language or self.languages.default
        with self._voices_lock:
            stage = self._voices.get(code)
            if stage is not None:
                self._voices.move_to_end(code)
                return stage
            location = self.languages.locations.get(code)
            if location is None:
                raise ValueError(self.language_problem(code))
            # VITS is small and its flow/spline layers are sensitive to half precision: keep it in
            # float32 unless DTYPE was set explicitly.
            dtype = None if self.settings.dtype == "auto" else self.dtype
            chunks = {"max_batch": SPEECH_CHUNKS_GPU} if self.device.type == "cuda" else {}
            setting = "SPEECH_MODEL" if not self.settings.languages else f"LANGUAGES {code}"
            stage = SpeechStage(
                location, device=str(self.device), dtype=dtype, setting=setting, language=code, **chunks
            )
            self._voices[code] = stage
            while len(self._voices) > self.settings.max_voices:
                self._voices.popitem(last=False)  # the least recently used voice: its memory goes with it
            return stage

    @property
    def voices(self) -> list[str]:
        """The codes of the voices held now, least recently used first."""
        with self._voices_lock:
            return list(self._voices)

    def load(self) -> dict[str, float]:
        """Load all three models and compile what runs compiled (the story model's decoding step for
        each batch bucket, "warm_up"); returns the seconds each took.

        A model that cannot be loaded here (a hub id while the hub is unreachable or HF_HUB_OFFLINE=1
        and it is not in the Hugging Face cache, or an unreachable STORY_ADAPTER) raises
        worker.engine.hub.ModelLoadError, a ConfigError naming the setting and the fixes, within
        seconds (see worker/engine/hub.py)."""
        seconds = {}
        for name in ("caption", "story", "speech"):
            start = time.perf_counter()
            getattr(self, name).load()
            seconds[name] = time.perf_counter() - start
        start = time.perf_counter()
        if self.story.warm_up(self.settings.story_words):
            seconds["warm_up"] = time.perf_counter() - start
        return seconds

    def narrate(
        self,
        image: Image.Image,
        words: int | None = None,
        seed: int | None = None,
        on_progress: ProgressCallback | None = None,
        sample: bool = True,
    ) -> Narration:
        """One photo to one narration.

        on_progress(stage, fields) is called as each stage starts, with the previous stage's
        result: ("caption", {}), ("story", {"caption": ...}), ("speech", {"story": ...}).
        sample=False makes the story greedy (deterministic, and the same alone or in a batch);
        with sampling, `seed` makes the story and the voice reproducible.
        """
        notify = (lambda stage, items: on_progress(stage, items[0])) if on_progress else None
        return self.encode(self._run([image], [words], [seed], sample, notify))[0]

    def narrate_batch(
        self,
        images: Sequence[Image.Image],
        words: int | Sequence[int | None] | None = None,
        seeds: Sequence[int | None] | None = None,
        sample: bool = True,
        on_progress: BatchProgressCallback | None = None,
        styles: Sequence[str | None] | None = None,
        encode: bool = True,
        languages: Sequence[str | None] | None = None,
    ) -> list[Narration]:
        """Each stage runs once over the whole list (once per distinct seed, and story length, for
        story and speech; styles mix in one call; speech runs once per language, with its voice).
        on_progress(stage, [fields per photo]) works as in narrate. `styles`: a STORY_STYLES name
        per photo (None: the default style); `languages`: a LANGUAGES code per photo (None: the default).
        encode=False returns as soon as the GPU stages are done: each Narration's mp3 is b"" until
        encode(narrations) runs, so a worker can encode one batch while the next one uses the GPU."""
        n = len(images)
        seeds = list(seeds) if seeds is not None else [None] * n
        words = list(words) if isinstance(words, (list, tuple)) else [words] * n
        styles = list(styles) if styles is not None else [None] * n
        languages = list(languages) if languages is not None else [None] * n
        if len(seeds) != n or len(words) != n or len(styles) != n or len(languages) != n:
            raise ValueError(
                f"{n} images but {len(seeds)} seeds, {len(words)} story lengths, {len(styles)} styles "
                f"and {len(languages)} languages"
            )
        if not images:
            return []
        narrations = self._run(list(images), words, seeds, sample, on_progress, styles, languages)
        return self.encode(narrations) if encode else narrations

    def _run(self, images, words, seeds, sample, on_progress, styles=None, languages=None) -> list[Narration]:
        words = [int(w or self.settings.story_words) for w in words]
        languages = [code or self.languages.default for code in (languages or [None] * len(images))]
        for code in set(languages):  # before any work: a language not served here fails at once
            problem = self.language_problem(code)
            if problem:
                raise ValueError(problem)
        notify = on_progress or (lambda stage, items: None)
        timings: dict[str, float] = {}

        notify("caption", [{} for _ in images])
        self.caption.load()  # the first job's one-off load is not part of the stage's latency
        start = time.perf_counter()
        captions = self.caption(images)
        timings["caption"] = time.perf_counter() - start

        notify("story", [{"caption": caption} for caption in captions])
        self.story.load()
        start = time.perf_counter()
        stories: list[str] = [""] * len(images)
        # The language is part of the prompt, like the length; styles mix within one call.
        for (seed, length, code), indexes in _groups(zip(seeds, words, languages, strict=True)).items():
            texts = self.story(
                [captions[i] for i in indexes],
                words=length,
                language=code,
                seed=seed,
                do_sample=sample,
                temperature=self.settings.story_temperature,
                top_p=self.settings.story_top_p,
                styles=[styles[i] for i in indexes] if styles else None,
            )
            for i, text in zip(indexes, texts, strict=True):
                stories[i] = text
        timings["story"] = time.perf_counter() - start

        notify("speech", [{"story": story} for story in stories])
        speeches = [None] * len(images)
        seconds = 0.0
        for code, group in _groups(languages).items():  # each language's voice speaks its own jobs
            voice = self.voice(code).load()  # a voice's first load is not part of the stage's latency
            start = time.perf_counter()
            for seed, indexes in _groups(seeds[i] for i in group).items():
                rows = [group[i] for i in indexes]
                for i, speech in zip(rows, voice([stories[i] for i in rows], seed=seed), strict=True):
                    speeches[i] = speech
            seconds += time.perf_counter() - start
        timings["speech"] = seconds

        return [
            Narration(caption, story, b"", speech.seconds, speech.sample_rate, dict(timings), speech.words, speech)
            for caption, story, speech in zip(captions, stories, speeches, strict=True)
        ]

    @staticmethod
    def encode(narrations: list[Narration]) -> list[Narration]:
        """Encode each narration's waveform to MP3 in place (timings["encode"]: its own seconds)."""
        from worker.engine.speech import encode_mp3

        def one(narration: Narration) -> None:
            if narration.speech is None:
                return  # already encoded
            start = time.perf_counter()
            narration.mp3, narration.speech = encode_mp3(narration.speech), None
            narration.timings["encode"] = time.perf_counter() - start

        # Each encode is an ffmpeg process, so a batch's encodes overlap well on threads.
        if len(narrations) == 1:
            one(narrations[0])
        elif narrations:
            with ThreadPoolExecutor(max_workers=min(len(narrations), os.cpu_count() or 2)) as pool:
                list(pool.map(one, narrations))
        return narrations
