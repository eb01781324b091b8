"""Story text: the words around the story model, the prompt it is given and the clean-up of its reply.

build_messages() is the single definition of the prompt format: the trainer (training/) builds its
examples with it, so the fine-tuned adapter sees at serving time exactly what it was trained on.
The prompt lives beside clean_story() because the clean-up must recognise the prompt when a model
echoes it. Pure text: nothing here imports torch or transformers.
"""

from __future__ import annotations

import re

from shared.languages import ENGLISH, language_name
from worker.engine.words import count_words

SYSTEM_PROMPT = (
    "You are a storyteller. Write a short story of about {words} words inspired by the photo "
    "described by the user. Give it a beginning, a middle and an end. Reply with the story only, "
    "as plain prose: no title, no markdown, no labels."
)
# Added for a language other than English; the caption (the user turn) stays in English, as the
# caption model writes it. English prompts stay exactly SYSTEM_PROMPT, which adapters are trained on.
LANGUAGE_PROMPT = " Write the story in {language}, in its usual script."


def build_messages(caption: str, words: int = 40, language: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one caption: a system prompt and the caption as the user turn.
    `language`: the story's ISO 639-3 code (shared/languages.py); None or "eng": English."""
    if int(words) < 1:
        raise ValueError("words must be a positive number")
    system = SYSTEM_PROMPT.format(words=int(words))
    if language and language != ENGLISH:
        name = language_name(language)
        system += LANGUAGE_PROMPT.format(
            language=name if name != language else f"the language whose ISO 639-3 code is {language}"
        )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": " ".join(str(caption).split())},
    ]


# --- clean-up of what the model wrote -------------------------------------------------------------
_SYSTEM_ECHO = re.compile(
    re.escape(SYSTEM_PROMPT).replace(re.escape("{words}"), r"\d+")
    + "(?:"
    + re.escape(LANGUAGE_PROMPT).replace(re.escape("{language}"), r"[^,\n]+")
    + ")?",
    re.I,
)
_CHAT_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_ASSISTANT_TURN = re.compile(r"<\|im_start\|>\s*assistant\s*\n?|^\s*assistant:?\s*$", re.I | re.M)
_PREAMBLE = re.compile(
    r"^(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[!.,]?\s*)*"
    r"(?:here(?:'s| is| it is| goes| you go)|below is|i(?:'ve| have) written)\b[^:\n]*:?",
    re.I,
)
_DROP_LINE = re.compile(r"^(?:title|caption|prompt|image|photo|word count)\s*:|^[-*_=]{3,}$|^```", re.I)
_TRAILER = re.compile(r"^(?:\(?\s*(?:word count|\d+ words)|i hope|let me know|feel free|note:)", re.I)
_BULLET = re.compile(r"^(?:>\s*|[-*•+]\s+|\d+[.)]\s+)+")
_LABEL = re.compile(
    r"(^|(?<=[.!?\"”])\s)\(?(?:story|short story|the story|beginning|middle|end|ending|answer|"
    r"response|output|narrative|assistant)\)?\s*(?:\(\d+ words\))?\s*[:\-–—]\s+",
    re.I,
)
_EMPHASIS = [
    re.compile(r"\*\*(.+?)\*\*"),
    re.compile(r"__(.+?)__"),
    re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"),
    re.compile(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)"),
]
_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Mt|Jr|Sr|vs|etc)\.$")
# A full stop in Devanagari is a danda; CJK full stops need no space after them.
_SENTENCE_END = re.compile(r"[.!?…।॥]+[\"'”’)\]]*(?=\s|$)|[。！？]+[」』\"'”’)\]）]*")
_QUOTES = '"“”'
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def _is_title(line: str) -> bool:
    """A short line with no sentence punctuation, as models put above a story."""
    bare = line.strip(" *_#\"“”'")
    return bool(bare) and count_words(bare) <= 10 and not re.search(r"[.!?…;。！？।]|,$", bare)


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
        text = text[turns[-1].end() :]
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
        if preamble and (preamble.group().endswith(":") or any(lines[index + 1 :])):
            line = line[preamble.end() :].strip()  # "Here is a short story about ...:"
            if not line:
                continue
        formatted = line.startswith(("#", "**", "__", '"', "“")) and _is_title(line)
        if first and (formatted or (_is_title(line) and any(lines[index + 1 :]))):
            continue  # a title above the story
        kept.append(_strip_markdown(line))
    while kept and (not kept[-1] or _TRAILER.match(kept[-1])):
        kept.pop()

    paragraphs = " ".join(line if line else "\n" for line in kept).split("\n")
    text = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
    text = _LABEL.sub(r"\1", text).strip()
    if cap and text.lower().startswith(cap) and text[len(cap) : len(cap) + 1] in (".", ":", "!", "\n"):
        text = text[len(cap) + 1 :].strip()  # the caption echoed as the first sentence
    text = _cut_to_sentence(text.strip())
    quotes = [i for i, ch in enumerate(text) if ch in _QUOTES]
    if quotes and quotes[0] == 0 and (len(quotes) == 1 or (len(quotes) == 2 and quotes[1] == len(text) - 1)):
        text = text.strip(_QUOTES).strip()  # the whole story wrapped in quotes
    return text[:1].upper() + text[1:]
