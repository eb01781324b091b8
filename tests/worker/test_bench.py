"""The bench runs end to end on the tiny models and prints a row per batch size (the GPU session's tool)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # the bench tool


def test_bench_prints_each_batch_size_with_the_static_cache_on():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.bench",
            "--batches",
            "2,1",
            "--runs",
            "1",
            "--styles",
            "none",
            "--static-cache",
            "on",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # The static cache compiled (warmed) one bucket per measured size while loading.
    assert re.search(r"model load \(s\): caption [\d.]+, story [\d.]+, speech [\d.]+, warm_up [\d.]+", out.stdout)
    rows = re.findall(r"^\s+(\d+) \|(.*)$", out.stdout, re.MULTILINE)
    assert [int(batch) for batch, _ in rows] == [1, 2], out.stdout
    for _, cells in rows:
        seconds = [float(x) for x in re.findall(r"(\d+\.\d+) \(", cells)]
        assert len(seconds) == 5 and all(s > 0 for s in seconds)  # caption, story, speech, encode, total
        jobs, overlapped, busy = re.findall(r"\|\s+([\d.]+%?)", cells.split(")")[-1])[:3]
        assert float(jobs) > 0 and float(overlapped) > 0 and 0 < float(busy.rstrip("%")) <= 100
    assert re.search(r"single job on an idle worker: [\d.]+ s", out.stdout)
