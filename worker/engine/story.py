"""Story stage: caption -> short story with an instruction-tuned chat model (Qwen2.5), optional LoRA.

build_messages() is the single definition of the prompt format: the trainer (training/) builds its
examples with it, so the fine-tuned adapter sees at serving time exactly what it was trained on.
Nothing is loaded at import; StoryStage.load() loads once per process.
"""
from __future__ import annotations

import re
import threading

SYSTEM_PROMPT = (
    "You are a storyteller. Write a short story of about {words} words inspired by the photo "
    "described by the user. Give it a beginning, a middle and an end. Reply with the story only, "
    "as plain prose: no title, no markdown, no labels."
)


def build_messages(caption: str, words: int = 40) -> list[dict[str, str]]:
    """The chat messages for one caption: a system prompt and the caption as the user turn."""
    if int(words) < 1:
        raise ValueError("words must be a positive number")
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(words=int(words))},
        {"role": "user", "content": " ".join(str(caption).split())},
    ]


# --- clean-up of what the model wrote -------------------------------------------------------------
_SYSTEM_ECHO = re.compile(re.escape(SYSTEM_PROMPT).replace(re.escape("{words}"), r"\d+"), re.I)
_CHAT_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_ASSISTANT_TURN = re.compile(r"<\|im_start\|>\s*assistant\s*\n?|^\s*assistant:?\s*$", re.I | re.M)
_PREAMBLE = re.compile(
    r"^(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[!.,]?\s*)*"
    r"(?:here(?:'s| is| it is| goes| you go)|below is|i(?:'ve| have) written)\b[^:\n]*:?", re.I)
_DROP_LINE = re.compile(r"^(?:title|caption|prompt|image|photo|word count)\s*:|^[-*_=]{3,}$|^```", re.I)
_TRAILER = re.compile(r"^(?:\(?\s*(?:word count|\d+ words)|i hope|let me know|feel free|note:)", re.I)
_BULLET = re.compile(r"^(?:>\s*|[-*•+]\s+|\d+[.)]\s+)+")
_LABEL = re.compile(
    r"(^|(?<=[.!?\"”])\s)\(?(?:story|short story|the story|beginning|middle|end|ending|answer|"
    r"response|output|narrative|assistant)\)?\s*(?:\(\d+ words\))?\s*[:\-–—]\s+", re.I)
_EMPHASIS = [re.compile(r"\*\*(.+?)\*\*"), re.compile(r"__(.+?)__"),
             re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"),
             re.compile(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)")]
_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Mt|Jr|Sr|vs|etc)\.$")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_QUOTES = "\"“”"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def _is_title(line: str) -> bool:
    """A short line with no sentence punctuation, as models put above a story."""
    bare = line.strip(" *_#\"“”'")
    return bool(bare) and len(bare.split()) <= 10 and not re.search(r"[.!?…;]|,$", bare)


def _strip_markdown(line: str) -> str:
    line = _BULLET.sub("", line.lstrip("#").strip()) if line.startswith("#") else _BULLET.sub("", line)
    for pattern in _EMPHASIS:
        line = pattern.sub(r"\1", line)
    return line.replace("**", "").replace("`", "").strip()


def _cut_to_sentence(text: str) -> str:
    ends = [m for m in _SENTENCE_END.finditer(text) if not _ABBREV.search(text[: m.end()])]
    if ends and ends[-1].end() == len(text):
        return text
    if ends:  # generation stopped mid-sentence: keep only the complete sentences
        return text[: ends[-1].end()]
    return text.rstrip(" ,;:-–—") + "." if text else text


def clean_story(raw: str, caption: str | None = None) -> str:
    """Reduce a raw model reply to the story alone: plain prose ending on a full sentence."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)  # control bytes and U+FFFD (broken UTF-8) would reach the speech stage
    turns = list(_ASSISTANT_TURN.finditer(text))
    if turns:  # the prompt was echoed: the story follows the last assistant header
        text = text[turns[-1].end():]
    text = re.sub(r"^\s*(?:<\|[a-z_]+\|>\s*)+", "", text)
    end = _CHAT_TOKEN.search(text)
    text = _SYSTEM_ECHO.sub("", text[: end.start()] if end else text)

    lines = [line.strip() for line in text.split("\n")]
    cap = " ".join((caption or "").lower().split()).rstrip(".!? ")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if not line:
            kept.append("")
            continue
        first = not any(kept)
        if _DROP_LINE.match(line) or (cap and line.lower().rstrip(".!? ") == cap):
            continue
        preamble = _PREAMBLE.match(line) if first else None
        if preamble and (preamble.group().endswith(":") or any(lines[index + 1:])):
            line = line[preamble.end():].strip()  # "Here is a short story about ...:"
            if not line:
                continue
        formatted = line.startswith(("#", "**", "__", '"', "“")) and _is_title(line)
        if first and (formatted or (_is_title(line) and any(lines[index + 1:]))):
            continue  # a title above the story
        kept.append(_strip_markdown(line))
    while kept and (not kept[-1] or _TRAILER.match(kept[-1])):
        kept.pop()

    paragraphs = " ".join(line if line else "\n" for line in kept).split("\n")
    text = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
    text = _LABEL.sub(r"\1", text).strip()
    if cap and text.lower().startswith(cap) and text[len(cap): len(cap) + 1] in (".", ":", "!", "\n"):
        text = text[len(cap) + 1:].strip()  # the caption echoed as the first sentence
    text = _cut_to_sentence(text.strip())
    quotes = [i for i, ch in enumerate(text) if ch in _QUOTES]
    if quotes and quotes[0] == 0 and (len(quotes) == 1 or (len(quotes) == 2 and quotes[1] == len(text) - 1)):
        text = text.strip(_QUOTES).strip()  # the whole story wrapped in quotes
    return text[:1].upper() + text[1:]


# --- the stage -------------------------------------------------------------------------------------
class StoryStage:
    """Batched story generation. Greedy decoding (do_sample=False) gives each caption the same story
    alone or in a batch. Sampling with a seed is reproducible for the same batch of captions, but a
    caption's story depends on its batch companions (one random stream is shared by the batch)."""

    def __init__(self, model: str, adapter: str | None = None, device="cpu", dtype=None,
                 quantize: str = "none", cache_dir: str | None = None):
        self.model_name, self.adapter, self.quantize = str(model), adapter, quantize or "none"
        self.device_setting, self.dtype_setting, self.cache_dir = device, dtype, cache_dir
        self.model = self.tokenizer = self.device = None
        self._load_lock, self._generate_lock = threading.Lock(), threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> "StoryStage":
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
        adapter_path = None
        if self.adapter:
            from worker.engine.adapters import resolve_adapter

            adapter_path = resolve_adapter(self.adapter, self.cache_dir or ".cache/adapters")
        # Left padding: a batch's prompts must all end where generation starts.
        tokenizer = AutoTokenizer.from_pretrained(self.model_name, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        quantization = devices.quantization_config(self.quantize, compute_dtype=dtype)
        kwargs = {"dtype": dtype}
        if quantization is not None or device.type == "cuda":
            kwargs["device_map"] = {"": str(device)}  # load straight onto the GPU
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        model = AutoModelForCausalLM.from_pretrained(self.model_name, **kwargs)
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path))
            if quantization is None:
                # Merged LoRA weights run at base-model speed; an unmerged adapter adds two small
                # matmuls per layer. Quantized weights cannot absorb the update, so keep it apart.
                model = model.merge_and_unload()
        if quantization is None and device.type != "cuda":
            model = model.to(device)
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device

    def preprocess(self, captions: list[str], words: int = 40):
        self.load()
        prompts = [self.tokenizer.apply_chat_template(build_messages(c, words), tokenize=False,
                                                      add_generation_prompt=True) for c in captions]
        # The chat template already holds every special token the model expects.
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        return batch.to(self.device)

    def forward(self, batch, seed: int | None = None, do_sample: bool = True, temperature: float = 0.8,
                top_p: float = 0.9, repetition_penalty: float | None = None, max_new_tokens: int = 112):
        """Generate and return only the new token ids (the prompt is cut off)."""
        import torch

        options = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                   "pad_token_id": self.tokenizer.pad_token_id}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # greedy: silence the sampling defaults shipped in Qwen's generation_config
            options.update(temperature=None, top_p=None, top_k=None)
        if repetition_penalty is not None:
            options["repetition_penalty"] = repetition_penalty
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        # The lock keeps a seeded run's random stream to itself; fork_rng restores the global RNG.
        with self._generate_lock, torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            with torch.inference_mode():
                output = self.model.generate(**batch, **options)
        return output[:, batch["input_ids"].shape[1]:]

    def postprocess(self, new_ids, captions: list[str] | None = None) -> list[str]:
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        captions = captions or [None] * len(texts)
        return [clean_story(text, caption) for text, caption in zip(texts, captions)]

    def __call__(self, captions: list[str], words: int = 40, seed: int | None = None,
                 do_sample: bool = True, temperature: float = 0.8, top_p: float = 0.9,
                 max_new_tokens: int | None = None, repetition_penalty: float | None = None) -> list[str]:
        if not captions:
            return []
        batch = self.preprocess(list(captions), words)
        # ~1.3 tokens per English word, plus room for the model to finish its last sentence.
        limit = max_new_tokens or int(words) * 2 + 32
        new_ids = self.forward(batch, seed=seed, do_sample=do_sample, temperature=temperature,
                               top_p=top_p, repetition_penalty=repetition_penalty, max_new_tokens=limit)
        return self.postprocess(new_ids, list(captions))
