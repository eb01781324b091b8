"""Speech stage: text normalisation, chunking, synthesis on the offline tiny VITS model, MP3 encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest

from worker.engine.speech import (
    DEFAULT_ALLOWED,
    Speech,
    SpeechStage,
    encode_mp3,
    normalize_text,
    number_words,
    ordinal_words,
    split_sentences,
)

WORDS = (
    "the old lighthouse keeper counted 3 ships at dawn and waved to each of them, "
    "while gulls circled above the grey water; then he climbed the 120 steps again. "
).split()
TEXT_300 = " ".join((WORDS * 20)[:300])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 dogs", "three dogs"),
        ("I saw 12 cats and 100 birds.", "i saw twelve cats and one hundred birds"),
        ("1,234,567", "one million two hundred thirty-four thousand five hundred sixty-seven"),
        ("7000000000 people", "seven billion people"),
        ("0", "zero"),
        ("3.5 km", "three point five km"),
        ("0.25", "zero point two five"),
        ("-4 degrees", "minus four degrees"),
        ("pages 2-3", "pages two to three"),
        ("version2", "version two"),
        ("the 1st, 2nd, 3rd and 21st", "the first second third and twenty-first"),
        ("her 100th and 112th birthdays", "her one hundredth and one hundred twelfth birthdays"),
        ("cats & dogs", "cats and dogs"),
        ("50% off", "fifty percent off"),
        ("$5", "five dollars"),
        ("$1.50", "one dollar and fifty cents"),
        ("$2.5 or $0.05", "two dollars and fifty cents or five cents"),
        ("£3 for $5k", "three pounds for five dollars k"),
        ("2 + 2 = 4", "two plus two equals four"),
        ("me@home", "me at home"),
        ("30°", "thirty degrees"),
        ("#1 fan", "number one fan"),
        ("at 7:05", "at seven oh five"),
        ("Mr. Brown", "mister brown"),
    ],
)
def test_normalize_spells_out_numbers_and_symbols(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Café NAÏVE façade", "cafe naive facade"),
        ("“Quoted” — it’s done…", "quoted it's done"),
        ("Straße", "strasse"),
        ("hello 😀 world 猫 🐈!", "hello world"),
        ("rock-n-roll don't", "rock-n-roll don't"),
        ("'stray' - marks", "stray marks"),
        ("a/b\tc\n\nd", "a b c d"),
        ("", ""),
        ("   \n ", ""),
        ("😀🐈 猫", ""),
    ],
)
def test_normalize_unicode_and_unknown_characters(text, expected):
    assert normalize_text(text) == expected


def test_normalize_output_stays_in_vocabulary():
    nasty = "Ünïcødé ½ ² ∞ ≠ ™ © 𝔣𝔞𝔫𝔠𝔶 مرحبا Привет 42nd {x}|<y> ~^`_\\ \u200b\x00 end"
    out = normalize_text(nasty)
    assert set(out) <= DEFAULT_ALLOWED
    assert "forty-second" in out and out.endswith("end") and "  " not in out


def test_normalize_respects_a_smaller_vocabulary():
    # without "-" in the vocabulary the hyphen becomes a space instead of gluing the words
    assert normalize_text("21 dogs", allowed=set("abcdefghijklmnopqrstuvwxyz ")) == "twenty one dogs"


@pytest.mark.parametrize(
    "n, words",
    [
        (15, "fifteen"),
        (40, "forty"),
        (99, "ninety-nine"),
        (101, "one hundred one"),
        (1000, "one thousand"),
        (1_000_001, "one million one"),
        (2_000_000_000, "two billion"),
    ],
)
def test_number_words(n, words):
    assert number_words(n) == words


@pytest.mark.parametrize(
    "n, words",
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (5, "fifth"),
        (12, "twelfth"),
        (20, "twentieth"),
        (23, "twenty-third"),
        (1_000_000, "one millionth"),
    ],
)
def test_ordinal_words(n, words):
    assert ordinal_words(n) == words


def test_split_sentences_at_boundaries():
    assert split_sentences('Hello there. How are you?  I\'m fine! "Really." Yes') == [
        "Hello there.",
        "How are you?",
        "I'm fine!",
        '"Really."',
        "Yes",
    ]
    assert split_sentences("") == [] and split_sentences("  \n ") == []


def test_split_sentences_300_words_keeps_every_word():
    chunks = split_sentences(TEXT_300, max_chars=200)
    assert len(chunks) > 5
    assert all(0 < len(c) <= 200 for c in chunks)
    assert " ".join(chunks).split() == TEXT_300.split()


def test_split_long_sentence_at_commas_then_words():
    clauses = ", ".join(f"clause number {i} goes here" for i in range(30)) + "."
    chunks = split_sentences(clauses, max_chars=60)
    assert all(len(c) <= 60 for c in chunks)
    assert all(c.endswith(",") or c.endswith(".") for c in chunks)  # cut after a comma
    assert " ".join(chunks) == clauses
    unpunctuated = " ".join(["word"] * 100) + " " + "x" * 130
    chunks = split_sentences(unpunctuated, max_chars=50)
    assert all(0 < len(c) <= 50 for c in chunks)
    assert "".join(chunks).replace(" ", "") == unpunctuated.replace(" ", "")
    with pytest.raises(ValueError):
        split_sentences("text", max_chars=0)


@pytest.fixture(scope="module")
def speech_model_dir(tmp_path_factory):
    from worker.tiny_models.speech import build

    return build(tmp_path_factory.mktemp("tiny-speech"), seed=0)


@pytest.fixture(scope="module")
def stage(speech_model_dir):
    return SpeechStage(str(speech_model_dir), seed=0)


def test_tiny_model_build_is_deterministic(speech_model_dir, tmp_path):
    from worker.tiny_models.speech import build

    again = build(tmp_path / "again", seed=0)
    files = sorted(p.name for p in speech_model_dir.iterdir())
    assert "model.safetensors" in files and "vocab.json" in files
    for name in files:
        assert (again / name).read_bytes() == (speech_model_dir / name).read_bytes(), name
    assert sum(p.stat().st_size for p in speech_model_dir.iterdir()) < 5_000_000


def test_stage_loads_lazily_once(speech_model_dir):
    stage = SpeechStage(str(speech_model_dir))
    assert stage.model is None and stage.tokenizer is None
    stage.load()
    model = stage.model
    stage.load()
    assert stage.model is model
    assert type(model).__name__ == "VitsModel"
    assert stage.allowed == DEFAULT_ALLOWED  # read from the MMS-shaped vocab.json


def test_model_is_published_last(speech_model_dir):
    # load() skips the lock once `model` is set, so the tokenizer and vocabulary must be ready by then.
    seen = []

    class Watched(SpeechStage):
        def __setattr__(self, name, value):
            if name == "model" and value is not None:
                seen.append((self.tokenizer, self.allowed))
            super().__setattr__(name, value)

    Watched(str(speech_model_dir)).load()
    assert len(seen) == 1 and seen[0][0] is not None and seen[0][1] == DEFAULT_ALLOWED


def test_batch_returns_one_speech_per_text(stage):
    texts = ["A red kite.", "Two dogs ran home, barking at 3 cats.", "Hi!"]
    out = stage(texts)
    assert len(out) == len(texts)
    for speech in out:
        assert isinstance(speech, Speech)
        assert speech.sample_rate == stage.model.config.sampling_rate == 16_000
        assert speech.waveform.dtype == np.float32 and speech.waveform.ndim == 1
        assert np.isfinite(speech.waveform).all() and np.abs(speech.waveform).max() <= 1.0
        assert speech.seconds > 0
    # each row is trimmed to its own length, not to the batch's padded length
    assert out[2].seconds < out[1].seconds


def test_300_words_are_chunked_and_spoken(stage):
    batch = stage.preprocess([TEXT_300])
    assert len(batch.chunks) > 5 and set(batch.owners) == {0}
    assert all(len(c) <= stage.max_chars for c in batch.chunks)
    waves = stage.forward(batch)
    [speech] = stage.postprocess(batch, waves)
    pause = int(stage.pause_seconds * speech.sample_rate)
    assert len(speech.waveform) == sum(map(len, waves)) + pause * (len(waves) - 1)
    short, medium = stage([" ".join(WORDS[:3]), " ".join(WORDS[:30])])
    assert short.seconds < medium.seconds < speech.seconds


def test_numbers_are_spoken_not_dropped(stage):
    batch = stage.preprocess(["I have 3 dogs."])
    assert batch.chunks == ["i have three dogs"]


def test_empty_texts_give_short_silence(stage):
    out = stage(["", "😀 猫", "Hello."])
    for speech in out[:2]:
        assert speech.seconds == pytest.approx(stage.empty_seconds)
        assert not speech.waveform.any()
    assert out[2].waveform.any()
    assert stage([]) == []


def test_seed_makes_speech_reproducible(stage):
    first = stage(["The same story twice."], seed=7)[0].waveform
    second = stage(["The same story twice."], seed=7)[0].waveform
    np.testing.assert_array_equal(first, second)


def test_max_batch_bounds_each_forward_pass(speech_model_dir, monkeypatch):
    stage = SpeechStage(str(speech_model_dir), max_batch=2).load()
    sizes = []
    original = stage.model.forward

    def spy(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(stage.model, "forward", spy)
    out = stage(["One. Two. Three.", "Four. Five."])
    assert sizes == [2, 2, 1] and len(out) == 2


def _decode(mp3: bytes):
    from pydub import AudioSegment

    return AudioSegment.from_file(io.BytesIO(mp3), format="mp3")


def test_encode_mp3_round_trip(stage):
    speech = stage(["A small boat sailed home at night."])[0]
    mp3 = encode_mp3(speech)
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF  # an ID3 tag or an MPEG frame sync
    audio = _decode(mp3)
    assert audio.frame_rate == speech.sample_rate and audio.channels == 1
    assert audio.duration_seconds > 0
    assert audio.duration_seconds == pytest.approx(speech.seconds, abs=0.15)


def test_encode_mp3_survives_odd_waveforms():
    wild = Speech(np.array([0.0, 2.0, -3.0, np.nan, np.inf] * 3200, dtype=np.float32), 16_000)
    assert _decode(encode_mp3(wild)).duration_seconds == pytest.approx(1.0, abs=0.15)
    assert _decode(encode_mp3(Speech(np.zeros(0, dtype=np.float32), 16_000))).duration_seconds > 0


def test_encode_mp3_without_ffmpeg_is_a_clear_error(monkeypatch):
    from pydub import AudioSegment

    from worker.engine.devices import ConfigError

    monkeypatch.setattr(AudioSegment, "converter", "ffmpeg-that-is-not-installed")
    with pytest.raises(ConfigError, match="ffmpeg not found; install it"):
        encode_mp3(Speech(np.zeros(1600, dtype=np.float32), 16_000))


def test_a_forward_pass_that_runs_out_of_memory_is_split(tmp_path):
    import torch

    from worker.engine.speech import SpeechStage
    from worker.tiny_models import speech as tiny_speech

    stage = SpeechStage(str(tiny_speech.build(tmp_path / "speech")), max_batch=8).load()
    rows = []

    def at_most_two(module, args, kwargs):
        rows.append(len(kwargs["input_ids"]))
        if len(kwargs["input_ids"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")

    stage.model.register_forward_pre_hook(at_most_two, with_kwargs=True)
    texts = ["One small dog. It ran far. The sea was cold.", "A cat sat. It slept all day."]
    batch = stage.preprocess(texts)
    waves = stage.forward(batch, seed=1)
    assert len(batch.chunks) == 5 and all(len(w) > 0 for w in waves)
    assert all(frames is not None for frames in batch.frames)  # word timings survive the split
    assert rows == [5, 3, 2, 1, 2]
