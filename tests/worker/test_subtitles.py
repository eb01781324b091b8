"""Word timings: from VITS's own token durations (the offline tiny model) to WebVTT, and the runner
storing them next to the audio, on real storage and a real Redis."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import numpy as np
import pytest
import redis

from tests.support.audio import decoded_seconds, parse_vtt
from worker.engine.speech import Speech, SpeechStage, encode_mp3, normalize_text
from worker.engine.subtitles import WordTiming, align, chunk_words, to_vtt

STORY = "The keeper counted 12 ships at dawn. Then he waved to each of them and went home."


@pytest.fixture(scope="module")
def stage(tiny_models_dir):
    # Short chunks: the story is spoken as two of them, with the pipeline's pause between.
    return SpeechStage(str(tiny_models_dir / "speech"), seed=0, max_chars=60)


@pytest.fixture(scope="module")
def spoken(stage):
    batch = stage.preprocess([STORY])
    waves = stage.forward(batch)
    [speech] = stage.postprocess(batch, waves)
    return batch, waves, speech


def test_durations_are_the_frames_vits_expanded(stage, spoken):
    batch, waves, _ = spoken
    hop = int(np.prod(stage.model.config.upsample_rates))
    assert len(batch.chunks) == 2
    for chunk, frames, wave in zip(batch.chunks, batch.frames, waves, strict=True):
        assert frames is not None and len(frames) == 2 * len(chunk) + 1  # add_blank: one token per char + blanks
        assert min(frames) >= 1 and sum(frames) * hop == len(wave)


def test_words_are_the_story_as_spoken_in_order_and_time(stage, spoken):
    batch, waves, speech = spoken
    words = [w.text for w in speech.words]
    assert words == normalize_text(STORY).split() and "twelve" in words
    for word, after in zip(speech.words, speech.words[1:], strict=False):
        assert 0 <= word.start < word.end <= after.start
    # The second chunk's words come after the first chunk's audio and the pause between them.
    first = len(batch.chunks[0].split())
    gap_start = len(waves[0]) / speech.sample_rate
    assert speech.words[first - 1].end <= gap_start < gap_start + stage.pause_seconds <= speech.words[first].start
    # The MP3 is as long as the waveform (ffmpeg trims the encoder delay: see the next test), and the
    # last word ends where the speech does, give or take the final blank token.
    seconds = decoded_seconds(encode_mp3(speech))
    assert abs(seconds - speech.seconds) < 0.01
    assert abs(speech.words[-1].end - seconds) < 0.3


def test_written_words_keep_their_spoken_words(spoken):
    _, _, speech = spoken
    written = STORY.split()
    assert [(w.text, written[w.ref]) for w in speech.words][2:5] == [
        ("counted", "counted"),
        ("twelve", "12"),
        ("ships", "ships"),
    ]


def test_mp3_encoder_delay_is_compensated():
    # A tone starting exactly at 0.5 s must still start at 0.5 s once encoded and decoded: LAME's
    # ~1105-sample delay is recorded in the MP3's header and removed by decoders (ffmpeg, Chromium).
    from pydub import AudioSegment

    rate = 16_000
    wave = np.zeros(rate, dtype=np.float32)
    wave[rate // 2 : rate // 2 + 320] = 0.8 * np.sin(np.arange(320) * 2 * np.pi * 1000 / rate)
    audio = AudioSegment.from_file(io.BytesIO(encode_mp3(Speech(wave, rate))), format="mp3")
    samples = np.abs(np.array(audio.get_array_of_samples(), dtype=np.float32)) / 32768
    onset = int(np.argmax(samples > 0.1))
    assert abs(onset - rate // 2) / rate < 0.005 and len(samples) == rate


@pytest.mark.parametrize(
    "story, spoken, refs",
    [
        ("I saw 12 cats.", "i saw twelve cats", [0, 1, 2, 3]),
        ("It cost $1.50 today", "it cost one dollar and fifty cents today", [0, 1, 2, 2, 2, 2, 2, 3]),
        ("Read pages 3 – 5 now", "read pages three to five now", [0, 1, 2, 3, 4, 5]),
        ("Wow — 😀 big fish", "wow big fish", [0, 3, 4]),
        ("twenty-one", "twenty-one", [0]),
    ],
)
def test_align_maps_spoken_words_to_written_ones(story, spoken, refs):
    assert normalize_text(story).split() == spoken.split()
    assert align(story, spoken.split()) == refs


def test_vtt_has_one_cue_per_written_word():
    words = [
        WordTiming("it", 0.0, 0.1, 0),
        WordTiming("one", 0.12, 0.2, 1),
        WordTiming("dollar", 0.2, 0.5, 1),
        WordTiming("<b>", 3661.0, 3661.2345, 2),
    ]
    vtt = to_vtt(words)
    assert parse_vtt(vtt) == [
        ("w0", 0.0, 0.1, "it"),
        ("w1", 0.12, 0.5, "one dollar"),
        ("w2", 3661.0, 3661.234, "&lt;b&gt;"),
    ]
    assert "01:01:01.000 --> 01:01:01.234" in vtt
    assert to_vtt([]) == "WEBVTT\n"


def test_without_usable_durations_words_share_the_chunk_by_characters():
    words = chunk_words("ab cd", None, 0.01, 1.0)
    assert [w for w, _, _ in words] == ["ab", "cd"]
    assert words[0][1] == 0 and words[-1][2] == pytest.approx(1.0)


def test_the_runner_stores_subtitles_with_their_run_and_tidies_other_runs(redis_url, tmp_path):
    from shared.jobs import Job, JobStore, new_job_id
    from shared.jobs.files import audio_key, subtitles_key
    from shared.settings import Settings
    from shared.storage import open_storage
    from worker.runner import Narrated, Run, finish_batch

    class Engine:  # the MP3s below are made already
        @staticmethod
        def encode(narrations):
            return narrations

    store = JobStore(redis.Redis.from_url(redis_url), ttl_seconds=60)
    storage = open_storage(f"file://{tmp_path}/data")
    settings = Settings(storage_retry_seconds=0)
    job_id = new_job_id()
    store.create(Job(id=job_id))
    assert store.claim("host-a:1:dead", first=job_id, lease_seconds=0.05)
    storage.put(subtitles_key(job_id, "host-a:1:dead"), b"WEBVTT\n")  # a run that died after uploading
    time.sleep(0.1)
    assert store.reap(max_attempts=3) == ([job_id], [])
    [held] = store.claim_jobs("host-b:2:live", first=job_id)

    def narration():
        words = [WordTiming("hi", 0.1, 0.3, 0), WordTiming("there", 0.4, 0.9, 1)]
        return SimpleNamespace(mp3=b"ID3", audio_seconds=1.0, caption="c", story="Hi there", timings={}, words=words)

    def finish(claimant: str, job) -> Run:
        run = Run(claimant)
        finish_batch(
            Narrated(claimant, [job], [narration()]),
            run,
            store=store,
            storage=storage,
            engine=Engine(),
            settings=settings,
        )
        return run

    assert finish("host-b:2:live", held).outcomes == {job_id: "succeeded"}
    job = store.get(job_id)
    assert job.subtitles_key == subtitles_key(job_id, "host-b:2:live")
    assert storage.list(f"subtitles/{job_id}/") == [job.subtitles_key]
    assert [cue[3] for cue in parse_vtt(storage.get(job.subtitles_key).decode())] == ["hi", "there"]
    # A late run whose job is no longer its own leaves nothing behind.
    assert finish("host-a:1:dead", store.get(job_id)).outcomes == {job_id: "lost"}
    assert storage.list(f"subtitles/{job_id}/") == [job.subtitles_key]
    assert storage.list(f"audio/{job_id}/") == [audio_key(job_id, "host-b:2:live")]
