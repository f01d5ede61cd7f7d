"""Fixed-shape forwards: a score never depends on the other images of its batch.

On the CPU, oneDNN and BLAS choose their kernels by the shapes of a call: the same image embedded in a batch of 3
and in a batch of 4 got CLIP embeddings that differ in the 7th significant digit, and an aesthetic score then moved
by one float32 ulp when other images joined its model. At one fixed shape the kernels are fixed and each row's
result depends only on that row (checked in tests/test_batch_invariance.py), so every scorer runs its forwards at
exactly ``size`` rows, padding the last chunk with zeros and dropping the padding's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from torch import Tensor
# torch is imported where rows are joined, so that the metric modules (and the registry) import without it.

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def paired_batches(items: Iterable[T], prompts: Sequence[str],
                   size: int) -> Iterator[tuple[list[T], Sequence[str]]]:
    """(items, their prompts) in chunks of ``size``, consuming ``items`` lazily (a stage can stream images from disk);
    a count that differs from ``len(prompts)`` fails once it shows. The pairing rule of every judge that scores an
    image against its prompt (HPSv2.1, PickScore)."""
    done = 0
    for batch in chunks(items, size):
        if done + len(batch) > len(prompts):
            raise ValueError(f"more images than the {len(prompts)} prompts: pass one prompt per image")
        yield batch, prompts[done : done + len(batch)]
        done += len(batch)
    if done != len(prompts):
        raise ValueError(f"{done} images but {len(prompts)} prompts: pass one prompt per image")


def padded(rows: Tensor, size: int) -> Tensor:
    """``rows`` [n <= size, ...] padded with zero rows to exactly ``size`` rows."""
    import torch

    if len(rows) > size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {size}")
    if len(rows) == size:
        return rows
    return torch.cat([rows, rows.new_zeros((size - len(rows), *rows.shape[1:]))])


def map_rows(fn: Callable[[Tensor], Tensor], x: Tensor, size: int) -> Tensor:
    """``fn`` applied to ``x`` [N, ...] in forwards of exactly ``size`` rows; the [N, ...] results concatenated."""
    import torch

    outs = [fn(padded(x[start : start + size], size))[: len(x[start : start + size])]
            for start in range(0, len(x), size)]
    return torch.cat(outs) if outs else fn(padded(x[:0], size))[:0]
