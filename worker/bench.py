"""Benchmark: `python -m worker.bench [--runs N] [--models DIR] [--device D] [--words N]`.

Measures model-load time, median per-stage latency for batch 1 and batch 8, and peak memory,
on the offline tiny models by default, so later changes can be compared on the same machine.
A script, not a test: the numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("caption", "story", "speech", "encode")


def synthetic_photo(seed: int, size=(640, 480)):
    """A smooth colour field: decodes and resizes like a photo, no file needed."""
    from PIL import Image

    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.new("L", size, (seed * 37) % 256)
    return Image.merge("RGB", (red, green, blue))


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux and bytes on macOS; tracemalloc cannot see torch's allocations.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def measure(engine, batch: int, runs: int, words: int) -> dict[str, float]:
    """Median seconds per stage for one narrate_batch of `batch` photos (after one warm-up)."""
    images = [synthetic_photo(i) for i in range(batch)]
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES + ("total",)}
    engine.narrate_batch(images, words=words, seeds=[0] * batch)  # warm-up: first-call overheads
    for run in range(runs):
        start = time.perf_counter()
        narrations = engine.narrate_batch(images, words=words, seeds=[run] * batch)
        total = time.perf_counter() - start
        samples["total"].append(total)
        for stage in ("caption", "story", "speech"):
            samples[stage].append(narrations[0].timings[stage])  # one figure for the whole batch
        # MP3 encodes of a batch overlap on threads: count the wall time they add, not their sum.
        samples["encode"].append(total - sum(narrations[0].timings[s] for s in ("caption", "story", "speech")))
    return {stage: statistics.median(values) for stage, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per batch size (median)")
    parser.add_argument("--models", type=Path, help="folder with caption/ story/ speech/ (default: build tiny ones)")
    parser.add_argument("--device", default=None, help="override DEVICE (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--words", type=int, default=40, help="story length")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from shared.settings import Settings
    from worker.engine import Engine

    with tempfile.TemporaryDirectory(prefix="narrator-bench-") as tmp:
        models = args.models
        if models is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from worker.tiny_models import build_all

            models = build_all(Path(tmp), seed=0)
        overrides = dict(caption_model=str(models / "caption"), story_model=str(models / "story"),
                         speech_model=str(models / "speech"))
        if args.device:
            overrides["device"] = args.device
        engine = Engine(Settings(**overrides))
        # Import the model code first so load time is reading weights, not importing modules.
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, BlipForConditionalGeneration, VitsModel  # noqa: F401

        loads = engine.load()
        results = {b: measure(engine, b, args.runs, args.words) for b in map(int, args.batches.split(","))}

    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.system()} {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"device {engine.device}, dtype {str(engine.dtype).replace('torch.', '')}")
    if engine.device.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(engine.device)}")
    print(f"models: {models if args.models else 'tiny random-weight models (worker.tiny_models, seed 0)'}")
    print("model load (s): " + ", ".join(f"{k} {v:.3f}" for k, v in loads.items())
          + f", total {sum(loads.values()):.3f}")
    print(f"median of {args.runs} runs after 1 warm-up, story of {args.words} words; seconds per batch "
          "(per photo in brackets)")
    header = f"{'batch':>5} | " + " | ".join(f"{s:>15}" for s in STAGES + ("total",))
    print(header)
    print("-" * len(header))
    for batch, medians in results.items():
        cells = [f"{medians[s]:7.3f} ({medians[s] / batch:5.3f})" for s in STAGES + ("total",)]
        print(f"{batch:>5} | " + " | ".join(cells))
    memory = f"peak memory: RSS {peak_rss_mb():.0f} MB"
    if engine.device.type == "cuda":
        memory += f", CUDA allocated {torch.cuda.max_memory_allocated(engine.device) / 2**20:.0f} MB"
    print(memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
