"""Narration languages: LANGUAGES names the MMS-TTS voice a worker speaks each language with.

`LANGUAGES=eng=facebook/mms-tts-eng,deu=facebook/mms-tts-deu,hin=/models/mms-tts-hin`: each code is
an ISO 639-3 code as Meta's MMS names its checkpoints (`facebook/mms-tts-<code>`), each location a
hub id or a local folder of such a checkpoint. A job picks one by code (`language`); DEFAULT_LANGUAGE
(else the first listed) serves jobs that name none. Unset, the service narrates in English only, from
SPEECH_MODEL. Parsed here, without torch, so the web app checks a job's `language` against the very
codes the workers serve. A bad value is an error at start-up (the worker's model load, create_app),
never at import: Settings() itself must still load to report it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# MMS's checkpoint suffixes: an ISO 639-3 code, a few with the script they are written in
# (mms-tts-kmr-script_latin, mms-tts-uig-script_arabic).
CODE = re.compile(r"[a-z]{3}(?:-script_[a-z]+)?")
ENGLISH = "eng"

# English names of common codes, for people (GET /api/v1/languages, the form) and for the story
# prompt ("Write the story in German"); any other code MMS has is served under its code.
NAMES = {
    "amh": "Amharic",
    "ara": "Arabic",
    "ben": "Bengali",
    "bul": "Bulgarian",
    "ces": "Czech",
    "cmn": "Mandarin Chinese",
    "dan": "Danish",
    "deu": "German",
    "ell": "Greek",
    "eng": "English",
    "est": "Estonian",
    "fas": "Persian",
    "fin": "Finnish",
    "fra": "French",
    "guj": "Gujarati",
    "hau": "Hausa",
    "heb": "Hebrew",
    "hin": "Hindi",
    "hun": "Hungarian",
    "ind": "Indonesian",
    "ita": "Italian",
    "jpn": "Japanese",
    "kan": "Kannada",
    "kor": "Korean",
    "mal": "Malayalam",
    "mar": "Marathi",
    "nld": "Dutch",
    "nor": "Norwegian",
    "pan": "Punjabi",
    "pol": "Polish",
    "por": "Portuguese",
    "ron": "Romanian",
    "rus": "Russian",
    "spa": "Spanish",
    "swe": "Swedish",
    "swh": "Swahili",
    "tam": "Tamil",
    "tel": "Telugu",
    "tgl": "Tagalog",
    "tha": "Thai",
    "tur": "Turkish",
    "ukr": "Ukrainian",
    "urd": "Urdu",
    "vie": "Vietnamese",
    "yor": "Yoruba",
    "yue": "Cantonese",
    "zlm": "Malay",
}


def language_name(code: str) -> str:
    """A code's English name, else the code itself."""
    return NAMES.get(code, code)


class LanguageError(ValueError):
    """LANGUAGES / DEFAULT_LANGUAGE cannot work; the message says which and why."""


class UnknownLanguage(ValueError):
    """A job asked for a language that is not served."""


@dataclass(frozen=True)
class Languages:
    locations: dict[str, str] = field(default_factory=dict)  # code -> MMS-TTS checkpoint, in LANGUAGES order
    default: str = ENGLISH

    @property
    def codes(self) -> list[str]:
        return list(self.locations)

    def resolve(self, requested: str | None) -> str:
        """The language a job is narrated in: `requested`, else the default."""
        requested = (requested or "").strip()
        if not requested:
            return self.default
        if requested not in self.locations:
            raise UnknownLanguage(f"'language' must be one of {', '.join(self.codes)} (got {requested[:40]!r}).")
        return requested


def parse_languages(raw: str | None, default: str | None = None, speech_model: str = "") -> Languages:
    """Raise LanguageError for anything but comma-separated unique `code=location` pairs and a default
    among those codes. Without pairs: English only, spoken by `speech_model` (SPEECH_MODEL)."""
    locations: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue  # a trailing comma
        code, sep, location = (part.strip() for part in item.partition("="))
        if not sep or not location:
            raise LanguageError(
                f"LANGUAGES: {item.strip()!r} is not code=location "
                "(e.g. eng=facebook/mms-tts-eng,deu=facebook/mms-tts-deu)"
            )
        if not CODE.fullmatch(code):
            raise LanguageError(
                f"LANGUAGES: {code!r} is not an ISO 639-3 code as MMS names its checkpoints "
                "(three lowercase letters: eng, deu, hin, swh)"
            )
        if code in locations:
            raise LanguageError(f"LANGUAGES names the language {code!r} twice")
        locations[code] = location
    default = (default or "").strip() or None
    if not locations:
        if default not in (None, ENGLISH):
            raise LanguageError(f"DEFAULT_LANGUAGE={default!r} but LANGUAGES is empty (English only): set both")
        return Languages({ENGLISH: speech_model})
    if default is not None and default not in locations:
        raise LanguageError(f"DEFAULT_LANGUAGE={default!r} is not one of the LANGUAGES codes ({', '.join(locations)})")
    return Languages(locations, default or next(iter(locations)))


def from_settings(settings) -> Languages:
    return parse_languages(
        getattr(settings, "languages", ""),
        getattr(settings, "default_language", None),
        getattr(settings, "speech_model", ""),
    )
