"""CUDA tests: marked ``cuda``, skipped (not failed) on a machine without a CUDA GPU.

Run them with ``pytest -m cuda`` (or ``pytest -m cuda tests/cuda``); the default ``pytest`` run
collects them and reports them as skipped when no GPU is present. ``benchmarks/device_check.sh``
runs them first on a lent GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine with `pytest -m cuda`)")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(NO_CUDA)


@pytest.fixture(autouse=True)
def _restore_cuda_settings():
    """Every CUDA test leaves the sync-debug mode and cuDNN flags as it found them, even on failure."""
    if not HAS_CUDA:
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    deterministic, benchmark = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.cuda.set_sync_debug_mode(mode)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Any host-device synchronisation inside raises (``torch.cuda.set_sync_debug_mode("error")``):
    ``.item()``, ``.cpu()``, ``bool(tensor)``, ``nonzero``, a blocking copy to the host..."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def sync_checked(batches):
    """Yield ``batches`` with the sync-debug mode at "error" while the consumer's loop body runs.

    Wrapping a loader this way scopes the check to the per-batch work of ``spectrum()``: the
    mode is on from the first ``next()`` until the loader is exhausted, and off again before
    ``spectrum`` reads its flags and solves (which sync once, legitimately).
    """
    with no_host_sync():
        yield from batches


def numpy_eigenvalues(z: np.ndarray, *, center: bool = True, ddof: int = 1) -> np.ndarray:
    """Independent reference: float64 covariance (or second moment) eigenvalues, descending."""
    z = np.asarray(z, dtype=np.float64)
    if center:
        z = z - z.mean(axis=0)
    return np.linalg.eigvalsh(z.T @ z / (len(z) - ddof))[::-1].copy()


def assert_eigenvalues_close(actual, expected, *, rtol: float = 1e-9, floor: float = 1e-8, what: str = "") -> None:
    """Each eigenvalue at or above ``floor`` x the largest agrees to ``rtol`` relative."""
    actual, expected = (np.asarray(x.detach().double().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
                        for x in (actual, expected))
    assert actual.shape == expected.shape, what
    keep = expected >= floor * expected.max()
    assert keep.any(), what
    relative = np.abs(actual[keep] - expected[keep]) / expected[keep]
    assert relative.max() <= rtol, f"{what}: max relative difference {relative.max():.2e} > {rtol:.0e} " \
                                    f"over the {keep.sum()} eigenvalues above {floor:.0e} x the largest"


@pytest.fixture
def tools() -> SimpleNamespace:
    """The helpers above, for test modules (pytest's importlib mode gives them no shared import)."""
    return SimpleNamespace(no_host_sync=no_host_sync, sync_checked=sync_checked, numpy_eigenvalues=numpy_eigenvalues,
                           assert_eigenvalues_close=assert_eigenvalues_close)


@pytest.fixture
def nccl_group(tmp_path):
    """A one-process NCCL process group on GPU 0 (world size 1: every collective runs for real)."""
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.fail("this CUDA build of torch has no NCCL")
    torch.cuda.set_device(0)
    store = dist.FileStore(str(tmp_path / "nccl_store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()
