"""Benchmark: `python -m worker.bench [--runs N] [--models DIR] [--device D] [--batches 1,8,...] [--words N]`.

Measures model-load (and compile) time; per batch size the median seconds of each stage, jobs/s when
batches run one after another, jobs/s when each batch's MP3 encoding overlaps the next batch's GPU
stages (as a worker runs them), the fraction of wall time the GPU stages were running, and peak GPU
memory; and a single job's latency on an idle worker. The offline tiny models are the default; for
GPU figures build full-size random-weight models (`python -m worker.tiny_models --full-size`).
Story styles: a batch of 8 all in one style against 8 mixed across the styles (STORY_STYLES, adapters
unmerged), next to one adapter merged (STORY_ADAPTER); with the tiny models it builds two random
adapters itself, with --models it needs --styles name=location,... (as STORY_STYLES).
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
    """For one batch size: median seconds per stage of `runs` batches (after one warm-up), and the
    rate of `runs` batches run back to back, each batch's MP3s encoded while the next is on the GPU."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    images = [synthetic_photo(i) for i in range(batch)]
    cuda = engine.device.type == "cuda"

    def gpu_stages(seed: int):
        narrations = engine.narrate_batch(images, words=words, seeds=[seed] * batch, encode=False)
        if cuda:
            torch.cuda.synchronize(engine.device)
        return narrations

    engine.encode(gpu_stages(0))  # warm-up: first-call overheads
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES + ("total",)}
    for run in range(runs):
        start = time.perf_counter()
        narrations = gpu_stages(run)
        done_gpu = time.perf_counter()
        engine.encode(narrations)
        samples["total"].append(time.perf_counter() - start)
        for stage in ("caption", "story", "speech"):
            samples[stage].append(narrations[0].timings[stage])  # one figure for the whole batch
        # A batch's MP3 encodes overlap on threads: count the wall time they add, not their sum.
        samples["encode"].append(time.perf_counter() - done_gpu)
    result = {stage: statistics.median(values) for stage, values in samples.items()}

    busy, pending = 0.0, None
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as encoder:
        for run in range(runs):
            began = time.perf_counter()
            narrations = gpu_stages(run)
            busy += time.perf_counter() - began
            if pending is not None:
                pending.result()  # one batch encoding at a time, as in the worker
            pending = encoder.submit(engine.encode, narrations)
        pending.result()
    wall = time.perf_counter() - start
    result.update(
        jobs_per_s=batch / result["total"],
        overlapped_jobs_per_s=runs * batch / wall,
        gpu_busy=busy / wall,
        peak_gpu_mb=torch.cuda.max_memory_allocated(engine.device) / 2**20 if cuda else None,
    )
    return result


CAPTIONS = [
    "a dog running on a beach",
    "two cats sitting on a window sill",
    "a red car parked in front of a tall building",
    "a plate of pasta with tomato sauce on a wooden table",
    "a man riding a bicycle down a street at night",
    "a group of people standing on top of a mountain",
    "a horse in a field of flowers",
    "a woman reading a book in a park",
]


def story_run(stage, styles: list | None, batch: int, words: int):
    """A function that times one batched story generation of exactly words*2+32 new tokens per row
    (what the engine allows a story of `words`): every case does the same work, however soon its
    adapter would have ended the stories (random adapters end them at random)."""
    import torch

    tokens = words * 2 + 32
    inputs = stage.preprocess([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)], words)
    names = stage.adapter_names(styles, batch)
    options = dict(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=stage.tokenizer.pad_token_id,
        **({"adapter_names": names} if names else {}),
    )

    def run() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            stage.model.generate(**inputs, **options)
        if stage.device.type == "cuda":
            torch.cuda.synchronize(stage.device)
        return time.perf_counter() - start

    return run


def timed(runs: dict, count: int) -> dict[str, float]:
    """Median seconds of each run after one warm-up each; the runs take turns, so a machine that
    gets busier meanwhile slows them all alike."""
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(count + 1):
        for label, run in runs.items():
            samples[label].append(run())
    return {label: statistics.median(values[1:]) for label, values in samples.items()}


def compare_styles(overrides: dict, spec: str, runs: int, words: int, batch: int = 8) -> dict[str, float]:
    """The story stage on a batch of `batch`: the first style's adapter merged (STORY_ADAPTER, the
    fast path), all rows in the first style and rows mixed across the styles (STORY_STYLES,
    unmerged; row i in style i mod n), one engine at a time. Median seconds per batch."""
    import gc

    import torch

    from shared.settings import Settings
    from shared.styles import parse_styles
    from worker.engine import Engine

    styles = parse_styles(spec)
    first = styles.names[0]
    merged = Engine(Settings(**overrides, story_adapter=styles.locations[first])).story.load()
    results = timed({f"{first} merged (STORY_ADAPTER)": story_run(merged, None, batch, words)}, runs)
    del merged
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    stage = Engine(Settings(**overrides, story_styles=spec)).story.load()
    mixed = [styles.names[i % len(styles.names)] for i in range(batch)]
    results.update(
        timed(
            {
                f"{first} only (styles)": story_run(stage, [first] * batch, batch, words),
                f"mixed {'/'.join(styles.names)} (styles)": story_run(stage, mixed, batch, words),
            },
            runs,
        )
    )
    return results


def tiny_styles(models: Path, out: Path) -> str:
    """Two random LoRA adapters on the tiny story model, as a STORY_STYLES value."""
    from worker.tiny_models import adapter

    return ",".join(
        f"{name}={adapter.build(models / 'story', out / name, seed=seed)}"
        for name, seed in (("bedtime", 1), ("adventure", 2))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per batch size (median)")
    parser.add_argument("--models", type=Path, help="folder with caption/ story/ speech/ (default: build tiny ones)")
    parser.add_argument("--device", default=None, help="override DEVICE (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--words", type=int, default=40, help="story length")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes, e.g. 1,8,32,64,128,256")
    parser.add_argument(
        "--static-cache",
        choices=("auto", "on", "off"),
        default="auto",
        help="STATIC_CACHE for the story model (auto: on a GPU); the measured batch sizes are its buckets",
    )
    parser.add_argument(
        "--styles",
        default=None,
        metavar="SPEC",
        help="STORY_STYLES to compare single-style and mixed batches of 8 (default with the tiny "
        "models: two random adapters; 'none' skips the comparison)",
    )
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
        overrides = dict(
            caption_model=str(models / "caption"),
            story_model=str(models / "story"),
            speech_model=str(models / "speech"),
        )
        if args.device:
            overrides["device"] = args.device
        batches = sorted({int(b) for b in args.batches.split(",")})
        # Each measured size is one batch (no splitting) and, with the static cache, one compiled shape
        # warmed while loading: the worker pads to its own few buckets instead (worker/engine/batching.py).
        engine = Engine(Settings(**overrides, static_cache=args.static_cache, worker_batch_size=max(batches)))
        engine.story.buckets = batches
        # Import the model code first so load time is reading weights, not importing modules.
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, BlipForConditionalGeneration, VitsModel  # noqa: F401

        loads = engine.load()
        results = {b: measure(engine, b, args.runs, args.words) for b in batches}
        spec = args.styles if args.styles != "none" else None
        if spec is None and args.models is None and args.styles != "none":
            spec = tiny_styles(models, Path(tmp) / "styles")
        style_results = compare_styles(overrides, spec, args.runs, args.words) if spec else {}

    cpu = platform.processor() or platform.machine()
    print(
        f"machine: {platform.system()} {cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"device {engine.device}, dtype {str(engine.dtype).replace('torch.', '')}"
    )
    if engine.device.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(engine.device)}")
    print(f"models: {models if args.models else 'tiny random-weight models (worker.tiny_models, seed 0)'}")
    print(
        "model load (s): " + ", ".join(f"{k} {v:.3f}" for k, v in loads.items()) + f", total {sum(loads.values()):.3f}"
    )
    print(
        f"median of {args.runs} runs after 1 warm-up, story of {args.words} words; seconds per batch "
        "(per photo in brackets)"
    )
    header = (
        f"{'batch':>5} | "
        + " | ".join(f"{s:>15}" for s in STAGES + ("total",))
        + f" | {'jobs/s':>7} | {'overlapped':>10} | {'GPU busy':>8} | {'peak GPU MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for batch, r in results.items():
        cells = [f"{r[s]:7.3f} ({r[s] / batch:5.3f})" for s in STAGES + ("total",)]
        print(
            f"{batch:>5} | "
            + " | ".join(cells)
            + f" | {r['jobs_per_s']:7.2f} | {r['overlapped_jobs_per_s']:10.2f} | {r['gpu_busy']:8.0%}"
            + (f" | {r['peak_gpu_mb']:11.0f}" if r["peak_gpu_mb"] is not None else f" | {'-':>11}")
        )
    print(
        "jobs/s: batches one after another; overlapped: each batch's MP3s encoded while the next batch runs "
        "its GPU stages (as a worker does), GPU busy: the share of that wall time the GPU stages ran"
    )
    if 1 in results:
        print(f"single job on an idle worker: {results[1]['total']:.3f} s (caption, story, speech and MP3)")
    if style_results:
        print(
            f"story styles ({'two tiny random adapters' if args.styles is None else args.styles}): story stage, "
            f"batch of 8, {args.words * 2 + 32} new tokens per row, median of {args.runs} runs after 1 warm-up"
        )
        merged, single, mixed = style_results.values()
        for label, seconds in style_results.items():
            print(f"  {label:<40} {seconds:7.3f} s ({seconds / 8:5.3f} per photo), {seconds / merged:5.2f}x merged")
        print(f"  mixed vs single-style: {100 * (mixed / single - 1):+.1f}%")
    memory = f"peak memory: RSS {peak_rss_mb():.0f} MB"
    if engine.device.type == "cuda":
        memory += f", CUDA allocated {torch.cuda.max_memory_allocated(engine.device) / 2**20:.0f} MB"
    print(memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
