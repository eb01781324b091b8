"""The control-plane bench (worker/control_bench.py): its no-op engine keeps the Engine's shapes, its
own commands stay out of the figures, a job that did not succeed is named, and a small run end to
end (a private redis-server, the web app, real Celery workers, the plain-Celery baseline) succeeds
and reports every figure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from shared.jobs import JobStatus
from tests.support.env import ROOT, requires_tool
from worker.control_bench import Unsucceeded, check_jobs, phase_commands
from worker.engine.subtitles import to_vtt
from worker.noop_engine import SILENT_FRAME, NoopEngine

pytestmark = pytest.mark.process  # the control bench tool

PHASES = ("submit", "run", "poll", "baseline send", "baseline run")


def test_the_noop_engine_reports_each_stage_and_encodes_afterwards_as_the_engine_does():
    engine = NoopEngine(SimpleNamespace(worker_batch_size=None))
    seen = []
    narrations = engine.narrate_batch(
        [object(), object()],
        words=[12, None],
        seeds=[None, 7],
        on_progress=lambda stage, fields: seen.append((stage, fields)),
        encode=False,
    )
    assert engine.batch_size == 8 and engine.device.type == "cpu"
    assert [stage for stage, _ in seen] == ["caption", "story", "speech"]
    assert seen[0][1] == [{}, {}]
    assert [f["caption"] for f in seen[1][1]] == [n.caption for n in narrations]
    assert [f["story"] for f in seen[2][1]] == [n.story for n in narrations]
    assert [len(n.story.split()) for n in narrations] == [12, 40]  # None: STORY_WORDS' default
    assert all(n.mp3 == b"" for n in narrations)  # encode=False: the MP3s come with encode()

    engine.encode(narrations)
    for narration in narrations:
        assert narration.mp3.startswith(SILENT_FRAME) and narration.audio_seconds > 0
        assert {"caption", "story", "speech", "encode"} <= set(narration.timings)
        assert to_vtt(narration.words).count(" --> ") == len(narration.story.split())


def test_the_bench_leaves_its_own_commands_out():
    stats = {
        "cmdstat_config|resetstat": {"calls": 1, "usec": 40},
        "cmdstat_info": {"calls": 2, "usec": 90},
        "cmdstat_hgetall": {"calls": 10, "usec": 100},  # 4 of them the bench's own watching
        "cmdstat_evalsha": {"calls": 3, "usec": 300},
    }
    assert phase_commands(stats, Counter({"hgetall": 4, "info": 2})) == {"hgetall": (6, 60), "evalsha": (3, 300)}


def test_a_job_that_did_not_succeed_is_named():
    jobs = {
        "good": SimpleNamespace(status=JobStatus.SUCCEEDED, audio_key="audio/good/a.mp3", error=None),
        "bad": SimpleNamespace(status=JobStatus.FAILED, audio_key=None, error="the caption stage failed"),
    }
    store = SimpleNamespace(get=jobs.get)
    storage = SimpleNamespace(exists=lambda key: True)
    assert check_jobs(store, storage, ["good"]) == [jobs["good"]]
    with pytest.raises(Unsucceeded) as raised:
        check_jobs(store, storage, ["good", "bad", "gone"])
    assert raised.value.problems == ["bad: failed (the caption stage failed)", "gone: missing (expired?)"]


@requires_tool(shutil.which("redis-server") is not None, "redis-server")
def test_a_small_run_succeeds_and_reports_every_figure():
    command = ["-m", "worker.control_bench", "--jobs", "24", "--workers", "2", "--batch", "4", "--polls", "3"]
    out = subprocess.run(
        [sys.executable, *command, "--json"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,  # nothing here is timed against the clock: a busy machine only makes it slower
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["all_succeeded"] is True

    for name in PHASES:
        phase = result["phases"][name]
        assert phase["calls"] > 0 and phase["usec_all"] > 0 and phase["top"], (name, phase)
        assert name in out.stdout
    assert result["phases"]["run"]["usec_scripts"] > 0  # the job store's transitions are scripts
    assert result["phases"]["poll"]["units"] == 24 * 3
    assert result["memory_per_job_bytes"] > 0
    job = result["job_with_polls"]
    assert job["polls"] == 3 and job["calls"] > 0 and job["usec_all"] > 0 and job["jobs_per_second_per_core_all"] > 0
    assert result["run"]["jobs_per_second"] > 0 and result["run"]["wall_seconds"] > 0
    base = result["baseline"]
    assert base["calls"] > 0 and base["usec_all"] > 0 and base["tasks_per_second_per_core_all"] > 0
    assert base["memory_per_task_bytes"] > 0
    for row in (*result["phases"].values(), job):  # each figure also as a multiple of the same run's plain task
        assert row["task_multiple"] == pytest.approx(row["usec_all"] / base["usec_all"])
    assert "x task" in out.stdout and "x a plain task" in out.stdout
    assert "memory per finished job" in out.stdout and "one Redis core at that cost" in out.stdout
