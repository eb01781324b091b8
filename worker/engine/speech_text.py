"""Speech text: story text -> what an MMS-TTS voice can say, cut into sentence-sized chunks.

MMS-TTS-eng only knows lowercase letters, space, apostrophe and hyphen (plus a few stray symbols),
and its tokenizer silently drops everything else: "3 dogs" would be read as "dogs". So numbers and
symbols are spelled out here first; split_sentences() then cuts the text into chunks short enough
for VITS (quality and memory degrade on very long inputs). Other languages' voices get prepare()
(their letters as written) or, when they were trained on romanized text, romanize() first. No model,
no numpy.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable

# What MMS-TTS-eng can actually say; the stage replaces it with the loaded tokenizer's vocabulary.
DEFAULT_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz '-")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_CURRENCIES = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent")}
_SYMBOLS = {
    "&": " and ",
    "%": " percent ",
    "+": " plus ",
    "@": " at ",
    "=": " equals ",
    "°": " degrees ",
    "#": " number ",
    "$": " dollars ",
    "£": " pounds ",
    "€": " euros ",
}
# Characters NFKD cannot decompose into ASCII but that have an obvious spelling.
_TRANSLITERATE = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "ł": "l",
        "Ł": "L",
        "þ": "th",
        "ð": "d",
        "‘": "'",
        "’": "'",
        "‚": "'",
        "‛": "'",
        "′": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "″": '"',
        "‐": "-",
        "‑": "-",
        "−": "-",
        "–": ", ",
        "—": ", ",
        "―": ", ",
        "…": "...",
        "⁄": "/",
    }
)
# Only the punctuation of _TRANSLITERATE: in a language other than English "ß" or "ø" are letters.
_PUNCTUATION = str.maketrans({k: v for k, v in _TRANSLITERATE.items() if not chr(k).isalpha()})
_ABBREVIATIONS = (
    (r"\bmr\.", "mister"),
    (r"\bmrs\.", "missus"),
    (r"\bms\.", "miz"),
    (r"\bdr\.", "doctor"),
    (r"\bvs\.", "versus"),
    (r"\betc\.", "et cetera"),
    (r"\be\.g\.", "for example"),
    (r"\bi\.e\.", "that is"),
)
_NUMBER = re.compile(r"(-?)(?<!\d)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")


def number_words(n: int) -> str:
    """Integer -> English words ("twenty-one", "three million five hundred")."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + (" " + number_words(rest) if rest else "")
    if n >= 10**15:  # nobody says quadrillions aloud; read the digits instead
        return " ".join(_ONES[int(d)] for d in str(n))
    for value, name in _SCALES:
        if n >= value:
            rest = n % value
            return number_words(n // value) + " " + name + (" " + number_words(rest) if rest else "")
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    words = number_words(n)
    head, sep, last = max(words.rpartition(" "), words.rpartition("-"), key=lambda p: len(p[0]))
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def _money(match: re.Match) -> str:
    unit, sub = _CURRENCIES[match.group(1)]
    whole = int(match.group(2).replace(",", ""))
    cents = int(match.group(3).ljust(2, "0")) if match.group(3) else 0  # "$1.5" is fifty cents
    parts = []
    if whole or not cents:
        parts.append(f"{number_words(whole)} {unit}{'' if whole == 1 else 's'}")
    if cents:
        subs = sub if cents == 1 else ("pence" if sub == "penny" else sub + "s")
        parts.append(f"{number_words(cents)} {subs}")
    return " " + " and ".join(parts) + " "


def _time(match: re.Match) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes == 0:
        return f"{number_words(hours)} o'clock"
    tail = number_words(minutes) if minutes >= 10 else "oh " + number_words(minutes)
    return f"{number_words(hours)} {tail}"


def _number(match: re.Match) -> str:
    sign, whole, decimals = match.groups()
    words = number_words(int(whole.replace(",", "")))
    if decimals:
        words += " point " + " ".join(_ONES[int(d)] for d in decimals)
    # "-5" at a word start is negative, "2-3" a range, "covid-19" a name; spaces keep "v2" apart
    before = match.string[match.start() - 1] if match.start() else " "
    if sign:
        sign = " to " if before.isdigit() else (" " if before.isalnum() else " minus ")
    return f"{sign or ' '}{words} "


def spell_out(text: str) -> str:
    """Lowercase ASCII with numbers and symbols as words; keeps sentence punctuation for splitting."""
    text = re.sub(r"(?<=\d)\s?–\s?(?=\d)", " to ", text)  # "pages 3–5"
    text = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATE)).translate(_TRANSLITERATE)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))  # café -> cafe
    text = text.lower()
    for pattern, words in _ABBREVIATIONS:
        text = re.sub(pattern, words, text)
    text = re.sub(r"([$£€])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2})\b)?", _money, text)
    text = re.sub(r"\b(\d{1,2}):(\d{2})\b", _time, text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: " " + ordinal_words(int(m.group(1))) + " ", text)
    text = re.sub(r"#\s?(?=\d)", " number ", text)
    text = _NUMBER.sub(_number, text)
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    return re.sub(r"\s+", " ", text).strip()


def keep_only(text: str, allowed: Iterable[str] = DEFAULT_ALLOWED, fold: bool = False) -> str:
    """Drop what the model cannot say; other symbols become spaces so words are not glued.
    fold: a character the model lacks is said without its accents where the model has that
    ("é" for a voice without it: "e"), as spell_out() does for English."""
    allowed = allowed if isinstance(allowed, (set, frozenset)) else set(allowed)
    text = "".join(ch if ch in allowed else (_folded(ch, allowed) if fold else " ") for ch in text)
    # apostrophes and hyphens only mean something inside words ("don't", "twenty-one", "l'eau")
    text = re.sub(r"(?<![^\W_])['-]+|['-]+(?![^\W_])", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _folded(ch: str, allowed: frozenset[str] | set[str]) -> str:
    bare = "".join(
        c for c in unicodedata.normalize("NFKD", ch.translate(_TRANSLITERATE)) if not unicodedata.combining(c)
    )
    return bare if bare and all(c in allowed for c in bare) else " "


def prepare(text: str) -> str:
    """Any language's text for a voice that is not English: lowercase, typographic punctuation made
    plain, letters and their accents kept as written (the voice's vocabulary decides, keep_only
    with fold=True). Numbers are not spelled out: that is English-only (spell_out())."""
    text = unicodedata.normalize("NFC", text.translate(_PUNCTUATION)).lower()
    return re.sub(r"\s+", " ", text).strip()


_romanizer = None
_romanizer_lock = threading.Lock()


def romanize(text: str, language: str | None = None) -> str:
    """Text in any script -> the Latin letters MMS voices trained on romanized text expect
    (their tokenizer's is_uroman), through the uroman package. Its tables load once per process
    (about 2 s), on the first call."""
    global _romanizer
    if _romanizer is None:
        with _romanizer_lock:
            if _romanizer is None:
                import uroman

                _romanizer = uroman.Uroman()
    lcode = (language or "")[:3] or None  # "kmr-script_latin" -> "kmr"
    return str(_romanizer.romanize_string(text, lcode=lcode))


def normalize_text(text: str, allowed: Iterable[str] = DEFAULT_ALLOWED) -> str:
    """Text -> only characters in `allowed`, with numbers and symbols spelled out."""
    return keep_only(spell_out(text), allowed)


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive parts (each <= max_chars) with spaces into chunks <= max_chars."""
    chunks: list[str] = []
    for part in parts:
        if chunks and len(chunks[-1]) + 1 + len(part) <= max_chars:
            chunks[-1] += " " + part
        else:
            chunks.append(part)
    return chunks


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Sentences, with over-long ones cut at , ; : and then between words; no text is dropped."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    chunks: list[str] = []
    # Devanagari's danda ends a sentence too; CJK full stops end one without a space after.
    for sentence in re.split(r"(?<=[.!?।॥])\s+|(?<=[.!?।॥][\"')\]])\s+|(?<=[。！？])", text.strip()):
        sentence = " ".join(sentence.split())
        if len(sentence) <= max_chars:
            chunks += [sentence] if sentence else []
            continue
        pieces: list[str] = []
        for clause in re.split(r"(?<=[,;:])\s+|(?<=[、，；：])", sentence):
            if len(clause) <= max_chars:
                pieces.append(clause)
                continue
            for word in clause.split():  # a single "word" longer than a chunk is cut as is
                pieces += [word[i : i + max_chars] for i in range(0, len(word), max_chars)]
        chunks += _pack(pieces, max_chars)
    return chunks
