"""What counts as a word, in scripts written with spaces between words and in scripts without.

Chinese, Japanese, Thai, Lao, Khmer and Myanmar text has no spaces between words, so str.split()
would take a whole sentence for one word: story clean-up would think it a title, a word count would
be 1, a subtitle cue would last the whole sentence. Finding those words needs a dictionary per
language; instead each character of such a script (with the combining marks that follow it) counts
as a word here. For Chinese that is about right (a character is about a morpheme); for Thai it
over-counts, which only makes cues shorter. Everything else is split at whitespace, as str.split().
The read-along page (web/static/job.js) splits a story the same way. Pure text.
"""

from __future__ import annotations

import re
import unicodedata

# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, CJK punctuation-free
# ideographs, Hiragana, Katakana (and their half-width forms), CJK extension blocks.
NO_SPACE = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f"
)
_NO_SPACE_CHAR = re.compile(f"[{NO_SPACE}]")


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of `text`: whitespace-separated runs, with every character of a
    script without spaces (and its combining marks) a word of its own."""
    spans = []
    for run in re.finditer(r"\S+", text):
        start, end = run.span()
        if not _NO_SPACE_CHAR.search(run.group()):
            spans.append((start, end))
            continue
        i = start
        while i < end:
            if _NO_SPACE_CHAR.match(text, i):
                j = i + 1  # the character and the marks that go with it (Thai vowels and tones)
                while j < end and unicodedata.category(text[j]).startswith("M"):
                    j += 1
                spans.append((i, j))
                i = j
                continue
            if spans and spans[-1][1] == i and unicodedata.category(text[i]).startswith("P"):
                spans[-1] = (spans[-1][0], i + 1)  # "猫。": the full stop belongs to its character
                i += 1
                continue
            j = i + 1  # a run of other characters (Latin, digits) up to the next unit
            while j < end and not _NO_SPACE_CHAR.match(text, j):
                j += 1
            spans.append((i, j))
            i = j
    return spans


def split_words(text: str) -> list[str]:
    """The words of `text` (see word_spans); str.split() for text with spaces between words."""
    return [text[start:end] for start, end in word_spans(text)]


def count_words(text: str) -> int:
    return len(word_spans(text))
