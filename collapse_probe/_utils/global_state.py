"""Process-wide settings the library may change, put back as they were when a block exits.

torch keeps several settings per process (CPU threads, random generators, TF32 and cuDNN flags,
the default dtype, deterministic mode, grad mode), as do Python's ``random``, numpy's legacy
generator and matplotlib's ``rcParams``. A library call from a notebook must leave all of them as
it found them, whether it returns or raises: :func:`restored_global_state` snapshots them on entry
and, on exit, sets back each one that differs (only those, so an untouched flag is never written).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def _settings() -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    """name -> (get, set) for every process-wide setting watched."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul

    def attr(obj: Any, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        return (lambda: getattr(obj, name)), (lambda value: setattr(obj, name, value))

    settings = {
        "num_threads": (torch.get_num_threads, torch.set_num_threads),
        "torch_rng": (torch.get_rng_state, torch.set_rng_state),
        "python_rng": (random.getstate, random.setstate),
        "numpy_rng": (np.random.get_state, np.random.set_state),
        "default_dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "grad_enabled": (torch.is_grad_enabled, torch.set_grad_enabled),
        "deterministic": (
            lambda: (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
            lambda value: torch.use_deterministic_algorithms(value[0], warn_only=value[1]),
        ),
        "float32_matmul_precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        "matmul.allow_tf32": attr(matmul, "allow_tf32"),
        "cudnn.allow_tf32": attr(cudnn, "allow_tf32"),
        "cudnn.benchmark": attr(cudnn, "benchmark"),
        "cudnn.deterministic": attr(cudnn, "deterministic"),
        "cudnn.enabled": attr(cudnn, "enabled"),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # never initialise CUDA just to look
        settings["cuda_rng"] = (torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all)
        settings["cuda_device"] = (torch.cuda.current_device, torch.cuda.set_device)
    if "matplotlib" in sys.modules:  # not imported yet: nothing the caller set can be lost
        import matplotlib

        def rc_params() -> dict[str, Any]:  # all but the backend, as matplotlib's rc_context keeps them
            return {k: v for k, v in dict.items(matplotlib.rcParams) if k != "backend"}

        settings["matplotlib.rcParams"] = (rc_params, lambda value: dict.update(matplotlib.rcParams, value))
    return settings


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are restored
        return False


def snapshot() -> dict[str, Any]:
    """The current value of every watched setting (see :func:`restored_global_state`)."""
    return {name: get() for name, (get, _) in _settings().items()}


@contextmanager
def restored_global_state() -> Iterator[None]:
    """Inside the block, change any process-wide setting; on exit (return or raise) each is set back.

    >>> before = torch.get_num_threads()
    >>> with restored_global_state():
    ...     torch.set_num_threads(1)
    ...     _ = torch.manual_seed(123)
    >>> torch.get_num_threads() == before
    True
    """
    saved = snapshot()
    try:
        yield
    finally:
        settings = _settings()
        for name, value in saved.items():
            if name in settings and not _same(settings[name][0](), value):
                settings[name][1](value)
