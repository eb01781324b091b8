"""Narration languages in the engine: a voice per language (tiny MMS-TTS voices of the real class),
romanized input for voices that ask for it, the story prompt, words in scripts without spaces, and
a mixed batch that speaks each job with its own language's voice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.settings import Settings
from worker.engine import ConfigError, Engine
from worker.engine.speech import SpeechStage
from worker.engine.speech_text import split_sentences
from worker.engine.story_text import SYSTEM_PROMPT, build_messages, clean_story
from worker.engine.subtitles import chunk_words, to_vtt
from worker.engine.words import count_words, split_words
from worker.tiny_models import speech as tiny_speech

ROOT = Path(__file__).resolve().parents[2]
HINDI = "एक छोटा कुत्ता समुद्र तट पर दौड़ा। वह बहुत खुश था।"
GERMAN = "Ein kleiner Hund läuft über die Straße. Er ist müde."


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("voices")
    return {code: tiny_speech.build(out / f"speech-{code}", seed=0, language=code) for code in ("deu", "hin")}


def test_devanagari_is_romanized_before_the_hindi_tokenizer(voices):
    stage = SpeechStage(str(voices["hin"]), seed=0, language="hin").load()
    assert stage.romanized and stage.tokenizer.is_uroman
    seen: list[str] = []
    tokenizer = stage.tokenizer

    def spy(texts, **kwargs):
        seen.extend(texts)
        return tokenizer(texts, **kwargs)

    stage.tokenizer = spy
    try:
        [speech] = stage([HINDI])
    finally:
        stage.tokenizer = tokenizer
    assert seen, "the tokenizer was never called"
    assert all(text.isascii() for text in seen), seen  # no Devanagari reached it
    assert "kutta" in " ".join(seen) and "khush" in " ".join(seen), seen  # uroman's reading of the words
    assert speech.waveform.size > 0 and np.abs(speech.waveform).max() > 0
    # Every written word is timed: a cue per Devanagari word, numbered as split_words(HINDI) counts them.
    refs = sorted({w.ref for w in speech.words})
    assert refs == list(range(len(HINDI.split())))
    assert to_vtt(speech.words).count(" --> ") == len(HINDI.split())


def test_a_voice_keeps_the_letters_its_language_writes(voices, tiny_models_dir):
    german = SpeechStage(str(voices["deu"]), seed=0, language="deu").load()
    assert not german.romanized
    assert german.speakable("Straße, Grüße!") == "straße grüße"
    english = SpeechStage(str(tiny_models_dir / "speech"), seed=0).load()
    assert english.speakable("Straße, 3 Grüße!") == "strasse three grusse"  # spelled out, as always
    [speech] = german([GERMAN])
    assert speech.waveform.size > 0
    assert [w.text for w in speech.words][:4] == ["ein", "kleiner", "hund", "läuft"]


def test_words_of_scripts_without_spaces():
    assert split_words("Ein Hund läuft.") == "Ein Hund läuft.".split()
    assert split_words("猫が好き。Hello") == ["猫", "が", "好", "き。", "Hello"]  # the full stop joins its word
    assert split_words("สวัสดี") == ["ส", "วั", "ส", "ดี"]  # Thai vowel marks stay with their letter
    assert count_words("一只小猫在花园里玩。") == 9
    assert split_sentences("一只小猫在花园里玩。它回家了！") == ["一只小猫在花园里玩。", "它回家了！"]
    assert split_sentences("वह खुश था। फिर घर गया।") == ["वह खुश था।", "फिर घर गया।"]
    # A spoken chunk in such a script is timed character by character, not as one word.
    timed = chunk_words("小猫玩", [1] * 3, 0.1, 0.3)
    assert [(w, round(s, 2), round(e, 2)) for w, s, e in timed] == [("小", 0, 0.1), ("猫", 0.1, 0.2), ("玩", 0.2, 0.3)]


def test_story_prompt_and_clean_up_in_other_languages():
    assert build_messages("a dog", 40)[0]["content"] == SYSTEM_PROMPT.format(words=40)  # English: unchanged
    assert build_messages("a dog", 40, "eng")[0]["content"] == SYSTEM_PROMPT.format(words=40)
    german = build_messages("a dog on a beach", 40, "deu")
    assert german[0]["content"].endswith("Write the story in German, in its usual script.")
    assert german[1]["content"] == "a dog on a beach"  # the caption stays English
    assert "ISO 639-3 code is xho" in build_messages("a dog", 40, "xho")[0]["content"]  # a code without a name
    # A Chinese paragraph is not a title (it is many words), a cut-off sentence goes, titles do.
    assert (
        clean_story("小猫的冒险\n\n一只小猫在花园里玩。它找到了一朵花。然后它")
        == "一只小猫在花园里玩。它找到了一朵花。"
    )
    assert clean_story("एक कुत्ता दौड़ा। वह खुश था। फिर") == "एक कुत्ता दौड़ा। वह खुश था।"
    echoed = german[0]["content"] + "\nassistant\nEin Hund lief am Strand."
    assert clean_story(echoed) == "Ein Hund lief am Strand."


def _settings(models: Path, voices: dict[str, Path], **values) -> Settings:
    languages = f"eng={models / 'speech'},deu={voices['deu']},hin={voices['hin']}"
    return Settings(
        caption_model=str(models / "caption"),
        story_model=str(models / "story"),
        speech_model="/nonexistent/ignored-with-languages",
        languages=languages,
        device="cpu",
        story_words=10,
        **values,
    )


def test_a_mixed_batch_speaks_each_job_with_its_languages_voice(tiny_models_dir, voices, monkeypatch):
    from PIL import Image

    engine = Engine(_settings(tiny_models_dir, voices, max_voices=2))
    assert engine.languages.default == "eng" and engine.languages.codes == ["eng", "deu", "hin"]
    spoken: dict[str, list[str]] = {}
    real_call = SpeechStage.__call__

    def recording(self, texts, seed=None):
        spoken.setdefault(self.language, []).extend(texts)
        return real_call(self, texts, seed=seed)

    monkeypatch.setattr(SpeechStage, "__call__", recording)
    prompts: list[str | None] = []
    real_story = type(engine.story).__call__

    def story(self, captions, **kwargs):
        prompts.extend([kwargs.get("language")] * len(captions))
        return real_story(self, captions, **kwargs)

    monkeypatch.setattr(type(engine.story), "__call__", story)
    images = [Image.new("RGB", (32, 32), color) for color in ("red", "green", "blue", "white")]
    languages = ["hin", "eng", "deu", None]  # None: the default, English
    narrations = engine.narrate_batch(images, languages=languages, sample=False)
    assert sorted(spoken) == ["deu", "eng", "hin"]  # one speech call per language group
    assert len(spoken["eng"]) == 2 and len(spoken["deu"]) == 1 and len(spoken["hin"]) == 1
    assert sorted(prompts, key=str) == sorted(["hin", "eng", "deu", "eng"])
    assert all(n.mp3 and n.audio_seconds > 0 for n in narrations)
    # Voices speak in the order their languages first appear; MAX_VOICES=2 keeps the last two.
    assert engine.voices == ["eng", "deu"]  # Hindi, the least recently used, went
    assert engine.voice("deu") is engine.voice("deu")  # a held voice is not built again
    with pytest.raises(ValueError, match="'fra' is not served by this worker"):
        engine.narrate_batch(images[:1], languages=["fra"])
    assert "not served" in engine.language_problem("fra") and engine.language_problem("hin") is None


def test_bad_languages_stop_the_engine_at_start(tiny_models_dir, voices):
    with pytest.raises(ConfigError, match="not code=location"):
        Engine(_settings(tiny_models_dir, voices).model_copy(update={"languages": "eng"}))
    with pytest.raises(ConfigError, match="LANGUAGES deu=/no/such/folder: no such model folder"):
        Engine(_settings(tiny_models_dir, voices).model_copy(update={"languages": "deu=/no/such/folder"}))
    without = Engine(Settings(speech_model=str(tiny_models_dir / "speech"), device="cpu"))
    assert without.languages.locations == {"eng": str(tiny_models_dir / "speech")}  # unset: English only


@pytest.mark.process  # the tiny-model builder, as a command
def test_the_cli_builds_a_voice_per_language(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worker.tiny_models", "--out", str(tmp_path), "--languages", "deu,hin"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    from transformers import VitsModel, VitsTokenizer

    for code, uroman in (("deu", False), ("hin", True)):
        folder = tmp_path / f"speech-{code}"
        assert str(folder) in result.stdout
        tokenizer = VitsTokenizer.from_pretrained(folder)
        assert tokenizer.is_uroman is uroman and tokenizer.language == code
        assert isinstance(VitsModel.from_pretrained(folder), VitsModel)
    assert "ä" in VitsTokenizer.from_pretrained(tmp_path / "speech-deu").get_vocab()
    bad = subprocess.run(
        [sys.executable, "-m", "worker.tiny_models", "--out", str(tmp_path), "--languages", "German"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "not an ISO 639-3 code" in bad.stderr
