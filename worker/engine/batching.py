"""Batch shapes for the GPU: a few bucket sizes, and batches that split instead of running out of memory.

A compiled decoding step (the story model's static KV cache) is specialised to its batch size, and
each new size compiles again (tens of seconds on a GPU). Padding every batch up to one of a few
sizes (1, 4, 16, 64, ... up to the largest batch) keeps the compiled shapes few enough to warm them
all while the worker loads, so no job pays for a compile. Decoding is bound by per-step overhead,
not arithmetic, so the padding rows cost little.

A batch that does not fit in GPU memory is halved and retried, down to one row; only a single row
that does not fit fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
GROWTH = 4  # each bucket is this many times the one before


def bucket_sizes(largest: int) -> list[int]:
    """The padded batch sizes used for batches of up to `largest` rows: 1, 4, 16, ... and `largest`."""
    if largest < 1:
        raise ValueError(f"the largest batch must be at least 1, not {largest}")
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= GROWTH
    return [*sizes, largest]


def bucket_for(rows: int, sizes: Sequence[int]) -> int:
    """The smallest of `sizes` that holds `rows` rows; `rows` itself when none does."""
    return min((size for size in sizes if size >= rows), default=rows)


def out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def run_split(run: Callable[[list[T]], Sequence[R]], items: Sequence[T], largest: int | None = None) -> list[R]:
    """run(items) in pieces of at most `largest`, each halved (and halved again) while it runs out
    of GPU memory. The results come back in the order of `items`."""
    items = list(items)
    if not items:
        return []
    step = largest or len(items)
    out: list[R] = []
    for start in range(0, len(items), step):
        out.extend(_halving(run, items[start : start + step]))
    return out


def _halving(run: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R]:
    try:
        return list(run(items))
    except Exception as exc:
        if not out_of_memory(exc) or len(items) == 1:
            raise
    _free_gpu_memory()
    half = (len(items) + 1) // 2
    log.warning("a batch of %d ran out of GPU memory; running it as %d + %d", len(items), half, len(items) - half)
    return _halving(run, items[:half]) + _halving(run, items[half:])


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()  # the failed attempt's tensors, still referenced from its traceback until now
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
