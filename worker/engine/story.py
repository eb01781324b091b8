"""Story stage: caption -> short story with an instruction-tuned chat model (Qwen2.5), optional LoRA.

The prompt format and the clean-up of the model's reply live in story_text.py.
Nothing is loaded at import; StoryStage.load() loads once per process.

One adapter (STORY_ADAPTER) is merged into the weights: base-model speed. Story styles (STORY_STYLES,
shared/styles.py) stay unmerged, one named peft adapter each on the one base model, and a batch mixes
them: generate(adapter_names=[style per row]) runs each row's LoRA on its own rows of every layer.

On a GPU (static_cache, STATIC_CACHE) decoding keeps its KV cache in fixed-size tensors, which lets
transformers compile the decoding step (torch.compile, CUDA graphs): the step then costs a fraction of
its eager overhead. The compiled step is specialised to the batch size and the cache length, so rows are
padded to a few bucket sizes (worker/engine/batching.py) and the cache to whole CACHE_BLOCKs, and
warm_up() compiles each bucket while the worker loads. Styles (unmerged adapters) decode eagerly: peft
routes each row to its adapter with forward hooks, which a compiled graph has not been tried with.
"""

from __future__ import annotations

import logging
import threading

from worker.engine.batching import bucket_for, bucket_sizes, run_split

# Re-exported: the trainer and tests import the prompt and clean-up from worker.engine.story.
from worker.engine.story_text import SYSTEM_PROMPT, build_messages, clean_story  # noqa: F401

# The static cache's length is a whole number of blocks. One block holds the prompt and the longest
# story the API allows (200 words: 432 new tokens), so every job reuses the step compiled for its
# bucket; a second length would compile every bucket again, inside users' jobs.
CACHE_BLOCK = 1024
log = logging.getLogger(__name__)
WARM_UP_TOKENS = 4  # the decoding step compiles on its first calls; a few tokens are enough


class StoryStage:
    """Batched story generation. Greedy decoding (do_sample=False) gives each caption the same story
    alone or in a batch. Sampling with a seed is reproducible for the same batch of captions, but a
    caption's story depends on its batch companions (one random stream is shared by the batch)."""

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        device="cpu",
        dtype=None,
        quantize: str = "none",
        cache_dir: str | None = None,
        setting: str = "STORY_MODEL",
        styles: dict[str, str] | None = None,
        default_style: str | None = None,
        static_cache: bool | None = None,
        max_batch: int = 64,
    ):
        self.model_name, self.adapter, self.quantize = str(model), adapter, quantize or "none"
        # Style name -> adapter location (shared/styles.py); empty: no styles, STORY_ADAPTER merged.
        self.styles = dict(styles or {})
        self.default_style = default_style or next(iter(self.styles), None)
        if self.styles and adapter:
            raise ValueError("a StoryStage serves STORY_ADAPTER or styles, not both")
        self.setting = setting  # named in the error when the model cannot be loaded
        self.device_setting, self.dtype_setting, self.cache_dir = device, dtype, cache_dir
        # None: a static (compiled) cache on a GPU, the plain dynamic cache elsewhere.
        self.static_cache_setting, self.static_cache = static_cache, False
        self.max_batch = max_batch  # the largest batch one generate() runs
        self.buckets = bucket_sizes(max_batch)  # the batch sizes rows are padded to (static cache)
        self._caches: dict[int, tuple] = {}  # bucket size -> (its length, its StaticCache), reused
        self.model = self.tokenizer = self.device = None
        self._load_lock, self._generate_lock = threading.Lock(), threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> StoryStage:
        if self.model is not None:
            return self
        with self._load_lock:
            if self.model is None:
                self._load()
        return self

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from worker.engine import devices

        device = devices.resolve_device(self.device_setting)
        devices.check_quantize(self.quantize, device)  # fail before reading gigabytes
        dtype = devices.resolve_dtype(self.dtype_setting, device)
        from worker.engine.adapters import resolve_adapter
        from worker.engine.hub import load_pretrained

        cache = self.cache_dir or ".cache/adapters"
        adapter_path = resolve_adapter(self.adapter, cache) if self.adapter else None
        # Every style's adapter is found (and downloaded) before gigabytes of base model are read.
        style_paths = {
            name: resolve_adapter(location, cache, f"STORY_STYLES {name}") for name, location in self.styles.items()
        }

        quantization = devices.quantization_config(self.quantize, compute_dtype=dtype)
        kwargs = {"dtype": dtype}
        if quantization is not None or device.type == "cuda":
            kwargs["device_map"] = {"": str(device)}  # load straight onto the GPU
        if quantization is not None:
            kwargs["quantization_config"] = quantization

        def from_pretrained(local_files_only: bool):
            # Left padding: a batch's prompts must all end where generation starts.
            tokenizer = AutoTokenizer.from_pretrained(
                self.model_name, padding_side="left", local_files_only=local_files_only
            )
            # The Auto class looks for a PEFT adapter_config.json in the repo without passing
            # local_files_only on (transformers 5.24): name it in adapter_kwargs, or a cached model
            # still asks the hub, and waits out its retries when the hub does not answer.
            model = AutoModelForCausalLM.from_pretrained(
                self.model_name,
                local_files_only=local_files_only,
                adapter_kwargs={"local_files_only": local_files_only},
                **kwargs,
            )
            return tokenizer, model

        tokenizer, model = load_pretrained(self.setting, self.model_name, from_pretrained)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if style_paths:
            model = self._attach_styles(model, style_paths)
        elif adapter_path is not None:
            from peft import PeftModel

            from worker.engine.adapters import AdapterError

            try:
                model = PeftModel.from_pretrained(model, str(adapter_path))
            except (KeyError, ValueError, OSError, RuntimeError) as exc:  # a broken or mismatched adapter
                raise AdapterError(
                    f"STORY_ADAPTER {self.adapter!r} cannot be loaded onto "
                    f"{self.model_name}: {type(exc).__name__}: {exc}"
                ) from exc
            if quantization is None:
                # Merged LoRA weights run at base-model speed; an unmerged adapter adds two small
                # matmuls per layer. Quantized weights cannot absorb the update, so keep it apart.
                model = model.merge_and_unload()
        if quantization is None and device.type != "cuda":
            model = model.to(device)
        self.tokenizer, self.device = tokenizer, device
        static = device.type == "cuda" if self.static_cache_setting is None else self.static_cache_setting
        # Not with styles (see above), nor with bitsandbytes weights, which torch.compile does not take.
        self.static_cache = bool(static) and not style_paths and quantization is None
        self.model = model.eval()  # last: load()'s lock-free fast path treats a model as "all ready"

    def _attach_styles(self, model, paths: dict):
        """The base model with every style's adapter by its name, unmerged (merging would bake one in)."""
        from peft import PeftModel

        from worker.engine.adapters import AdapterError

        for name, path in paths.items():
            try:
                if isinstance(model, PeftModel):
                    model.load_adapter(str(path), adapter_name=name)
                else:
                    model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            except (KeyError, ValueError, OSError, RuntimeError) as exc:  # a broken or mismatched adapter
                raise AdapterError(
                    f"STORY_STYLES {name}={self.styles[name]} cannot be loaded onto "
                    f"{self.model_name}: {type(exc).__name__}: {exc}"
                ) from exc
        return model

    def adapter_names(self, styles, count: int) -> list[str] | None:
        """Each row's peft adapter (None: no styles, one model for all). A row without a style gets
        the default; a style this stage does not serve is a ValueError naming it."""
        styles = list(styles) if styles is not None else [None] * count
        if len(styles) != count:
            raise ValueError(f"{count} captions but {len(styles)} styles")
        if not self.styles:
            asked = sorted({s for s in styles if s})
            if asked:
                raise ValueError(
                    f"no story styles are served here (STORY_STYLES is empty), but {asked[0]!r} was asked for"
                )
            return None
        names = [style or self.default_style for style in styles]
        unknown = sorted(set(names) - set(self.styles))
        if unknown:
            raise ValueError(f"story style {unknown[0]!r} is not served here (STORY_STYLES: {', '.join(self.styles)})")
        return names

    def preprocess(self, captions: list[str], words: int = 40, language: str | None = None):
        self.load()
        prompts = [
            self.tokenizer.apply_chat_template(
                build_messages(c, words, language), tokenize=False, add_generation_prompt=True
            )
            for c in captions
        ]
        # The chat template already holds every special token the model expects.
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        return batch.to(self.device)

    def forward(
        self,
        batch,
        seed: int | None = None,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.9,
        repetition_penalty: float | None = None,
        max_new_tokens: int = 112,
        adapter_names: list[str] | None = None,
    ):
        """Generate and return only the new token ids (the prompt is cut off). `adapter_names`: one
        style per row (see adapter_names()), for a stage with styles. With the static cache the rows
        are padded to a bucket size (copies of the last row, dropped again): a batch of one is never
        padded, so a seeded job alone samples exactly what it would in any batch of its own."""
        import torch
        from transformers import StoppingCriteriaList

        from worker.engine.devices import seeded

        options = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # greedy: silence the sampling defaults shipped in Qwen's generation_config
            options.update(temperature=None, top_p=None, top_k=None)
        if repetition_penalty is not None:
            options["repetition_penalty"] = repetition_penalty
        rows, prompt = batch["input_ids"].shape
        size = bucket_for(rows, self.buckets) if self.static_cache else rows
        if size > rows:
            batch = {key: torch.cat([value, value[-1:].expand(size - rows, -1)]) for key, value in batch.items()}
            if adapter_names is not None:
                adapter_names = [*adapter_names, *[adapter_names[-1]] * (size - rows)]
            # The copies count as done from the start: a sampled copy must not outlast the real rows.
            options["stopping_criteria"] = StoppingCriteriaList(
                [lambda ids, scores, **_: torch.arange(ids.shape[0], device=ids.device) >= rows]
            )
        if adapter_names is not None:
            options["adapter_names"] = list(adapter_names)
        # The lock keeps a seeded run's random stream (and a bucket's cache) to itself.
        with self._generate_lock, seeded(seed, self.device), torch.inference_mode():
            if self.static_cache:
                try:
                    options["cache"] = self._static_cache(size, prompt + max_new_tokens)
                    output = self.model.generate(**batch, **options)
                    return output[:rows, prompt:]
                except Exception as exc:
                    if not self._give_up_static_cache(exc):
                        raise
                # eager from here on, this batch included: its rows as they came, unpadded
                batch = {key: value[:rows] for key, value in batch.items()}
                options.pop("cache", None)
                options.pop("stopping_criteria", None)
                if adapter_names is not None:
                    options["adapter_names"] = list(adapter_names)[:rows]
            output = self.model.generate(**batch, **options)
        return output[:rows, prompt:]

    def _give_up_static_cache(self, exc: Exception) -> bool:
        """STATIC_CACHE=auto: a static cache that fails (torch.compile, a CUDA graph that cannot be
        captured) costs speed, not jobs: decode eagerly from now on, and say why once. With
        STATIC_CACHE=on the failure stands (False): the operator asked for it."""
        if self.static_cache_setting is not None:
            return False
        self.static_cache, self._caches = False, {}
        log.warning(
            "STATIC_CACHE=auto: the static KV cache failed (%s: %s); decoding eagerly from now on",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return True

    def _static_cache(self, size: int, tokens: int):
        """The bucket's one StaticCache, emptied in place: the compiled step (its CUDA graph) keeps
        the addresses of the cache's tensors, so a new cache per call would record a new graph."""
        from transformers import StaticCache

        length = -(-tokens // CACHE_BLOCK) * CACHE_BLOCK
        held, cache = self._caches.get(size, (0, None))
        if cache is None or held < length:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._caches[size] = (length, cache)
        else:
            cache.reset()
        return cache

    def postprocess(self, new_ids, captions: list[str] | None = None) -> list[str]:
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        captions = captions or [None] * len(texts)
        return [clean_story(text, caption) for text, caption in zip(texts, captions, strict=True)]

    def __call__(
        self,
        captions: list[str],
        words: int = 40,
        seed: int | None = None,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.9,
        max_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        styles: list[str | None] | None = None,
        language: str | None = None,
    ) -> list[str]:
        """`styles`: one per caption (None: the default style), for a stage with styles. `language`:
        the ISO 639-3 code the story is written in (None: English)."""
        if not captions:
            return []
        names = self.adapter_names(styles, len(captions))  # before any work: an unknown style fails at once
        # ~1.3 tokens per English word, plus room for the model to finish its last sentence; other
        # languages and scripts take up to about three tokens a word. Either fits one CACHE_BLOCK.
        per_word = 2 if language in (None, "eng") else 4
        limit = max_new_tokens or int(words) * per_word + 32

        def run(rows: list[tuple[str, str | None]]) -> list[str]:
            texts = [caption for caption, _ in rows]
            new_ids = self.forward(
                self.preprocess(texts, words, language),
                seed=seed,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                max_new_tokens=limit,
                adapter_names=[name for _, name in rows] if names else None,
            )
            return self.postprocess(new_ids, texts)

        # More rows than max_batch, or more than fit in GPU memory, run as several batches.
        return run_split(run, list(zip(captions, names or [None] * len(captions), strict=True)), self.max_batch)

    def warm_up(self, words: int = 40) -> list[int]:
        """Compile the static-cache decoding step for every bucket size now, not in a user's job;
        returns the sizes warmed (none without the static cache)."""
        self.load()
        if not self.static_cache:
            return []
        for size in self.buckets:
            # A short run: its cache is still the one block the real stories use.
            self.forward(
                self.preprocess(["A photograph of a quiet street"] * size, words), max_new_tokens=WARM_UP_TOKENS
            )
            if not self.static_cache:
                return []  # it failed and (STATIC_CACHE=auto) decoding went eager: nothing more to warm
        return list(self.buckets)
