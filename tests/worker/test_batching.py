"""Bucket sizes and the halving of batches that run out of GPU memory (worker/engine/batching.py)."""

from __future__ import annotations

import pytest
import torch

from worker.engine.batching import bucket_for, bucket_sizes, run_split


def test_bucket_sizes_grow_by_four_up_to_the_largest_batch():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 4, 8]
    assert bucket_sizes(64) == [1, 4, 16, 64]
    assert bucket_sizes(128) == [1, 4, 16, 64, 128]
    with pytest.raises(ValueError):
        bucket_sizes(0)


def test_rows_go_to_the_smallest_bucket_that_holds_them():
    sizes = bucket_sizes(128)
    assert [bucket_for(n, sizes) for n in (1, 2, 4, 5, 16, 17, 65, 128)] == [1, 4, 4, 16, 16, 64, 128, 128]
    assert bucket_for(300, sizes) == 300  # larger than every bucket: its own size, never fewer rows


def fits_in(limit: int, calls: list[int]):
    """A stage that runs out of (pretend) GPU memory above `limit` rows."""

    def run(items):
        calls.append(len(items))
        if len(items) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [item * 10 for item in items]

    return run


def test_a_batch_that_does_not_fit_is_halved_until_it_does():
    calls: list[int] = []
    assert run_split(fits_in(3, calls), list(range(10))) == [i * 10 for i in range(10)]
    assert calls == [10, 5, 3, 2, 5, 3, 2]  # in order, every row exactly once in the end


def test_batches_are_cut_to_the_largest_size_first():
    calls: list[int] = []
    assert run_split(fits_in(100, calls), list(range(10)), largest=4) == [i * 10 for i in range(10)]
    assert calls == [4, 4, 2]
    assert run_split(fits_in(1, []), []) == []


def test_a_single_row_that_does_not_fit_and_other_errors_are_raised():
    with pytest.raises(torch.OutOfMemoryError):
        run_split(fits_in(0, []), [1, 2])
    calls: list[int] = []

    def broken(items):
        calls.append(len(items))
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        run_split(broken, [1, 2, 3, 4])
    assert calls == [4]  # never retried in halves
