"""Data parallelism under `accelerate launch` / `torchrun`: who this process is, waiting, sharding and gathering.

With one process (a plain `python` run, a notebook) every helper is a no-op: rank 0 of 1, nothing waits,
`shard` keeps everything, `gather_in_order` returns what it was given. Under a launcher (WORLD_SIZE > 1)
the process group is set up on first use through accelerate's `PartialState` (nccl on GPUs, gloo on CPU).

    >>> mine = shard(list(enumerate(batches)))        # this process's share, strided by rank
    >>> done = [(i, work(b)) for i, b in mine]
    >>> results = gather_in_order(done, len(batches))  # every process gets all results, in order
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence, TypeVar

import torch

__all__ = ["world_size", "rank", "is_main_process", "wait_for_everyone", "main_process_first", "shard",
           "gather_in_order"]

T = TypeVar("T")


def world_size() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _state():
    """accelerate's PartialState, initialising the process group on first use (only called when world_size() > 1)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    """This process's index among all processes (0 without a launcher)."""
    return _state().process_index if world_size() > 1 else 0


def is_main_process() -> bool:
    """True for the process that writes shared files (the only one without a launcher)."""
    return rank() == 0


def wait_for_everyone() -> None:
    """A barrier across all processes (nothing without a launcher)."""
    if world_size() > 1:
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (e.g. a one-off model conversion)."""
    if world_size() == 1:
        yield
        return
    if not is_main_process():
        wait_for_everyone()
    try:
        yield
    finally:
        if is_main_process():
            wait_for_everyone()


def shard(items: Sequence[T], index: int | None = None, n: int | None = None) -> list[T]:
    """This process's share of `items`: every n-th item from its rank (strided, so sorted work stays balanced)."""
    index = rank() if index is None else index
    n = world_size() if n is None else n
    return list(items[index::n])


def gather_in_order(pairs: Sequence[tuple[int, Any]], n: int) -> list[Any]:
    """Every process's (position, value) pairs joined into one list of length n, on every process.

    Raises if a position is missing or given twice: a sharding mistake must not pass silently.
    """
    found: list[tuple[int, Any]] = list(pairs)
    if world_size() > 1:
        import torch.distributed as dist

        _state()
        parts: list[Any] = [None] * world_size()
        dist.all_gather_object(parts, found)
        found = [p for part in parts for p in part]
    positions = sorted(i for i, _ in found)
    if positions != list(range(n)):
        raise RuntimeError(f"gathered positions do not cover 0..{n - 1} exactly once: {positions[:10]}...")
    out: list[Any] = [None] * n
    for i, value in found:
        out[i] = value
    return out
