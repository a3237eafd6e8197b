"""Where this process stands in a ``torch.distributed`` job; the one place the library asks.

Without an initialised process group every answer is that of a single process (rank 0 of 1).
"""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a process that is not part of a distributed job: the one that
    writes files, prints progress and logs.

    >>> is_main_process()
    True
    """
    return rank() == 0


def local_rank() -> int | None:
    """This process's GPU index on its machine under torchrun (``LOCAL_RANK``); None otherwise.

    >>> local_rank() is None or isinstance(local_rank(), int)
    True
    """
    import os

    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and value.isdigit() and is_distributed() else None
