"""One intra-op CPU thread for small kernels, restoring the caller's setting afterwards.

On a 2-core machine with any other busy process, 2-thread OpenMP/MKL regions stall: measured
3-22x slow-downs of small eigen-solves and toy-model matmuls (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block when ``enabled``; the old value after it.

    The setting is process-wide: other Python threads running torch ops meanwhile use one thread too.

    >>> before = torch.get_num_threads()
    >>> with single_threaded():
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if not enabled:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
