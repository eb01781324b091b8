"""Reading what the service makes: MP3 bytes and WebVTT subtitles."""

from __future__ import annotations

import io
import re


def is_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


CUE = re.compile(r"^(w\d+)\n(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)$")


def parse_vtt(text: str) -> list[tuple[str, float, float, str]]:
    """(id, start, end, text) per cue; fails on anything that is not this WebVTT shape."""
    head, *blocks = text.strip("\n").split("\n\n")
    assert head == "WEBVTT"
    cues = []
    for block in blocks:
        match = CUE.match(block)
        assert match, block
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups()[1:9])
        cues.append((match[1], h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, match[10]))
    return cues


def decoded_seconds(mp3: bytes) -> float:
    from pydub import AudioSegment

    return AudioSegment.from_file(io.BytesIO(mp3), format="mp3").duration_seconds
