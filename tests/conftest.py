"""Shared test settings: deterministic float64-accurate maths, no TF32, a fixed seed."""

import matplotlib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from collapse_probe_cli.errors import run_cli
from collapse_probe_cli.main import cli

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _deterministic_numerics():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    yield


def numpy_lidar(z: np.ndarray, delta: float = 1e-4, eps: float = 1e-8) -> tuple[np.ndarray, float]:
    """stable-pretraining's LiDAR callback, step by step, in numpy float64 on all (C, q, d) views:
    the LDA eigenvalues (descending) and the score. Written from the callback's source, independent
    of collapse_probe."""
    z = np.asarray(z, dtype=np.float64)
    c, q, d = z.shape
    class_means = z.mean(axis=1)
    centred_means = class_means - class_means.mean(axis=0)
    sb = centred_means.T @ centred_means / (c - 1)
    deviations = (z - class_means[:, None, :]).reshape(-1, d)
    sw = deviations.T @ deviations / (c * (q - 1)) + delta * np.eye(d)
    w, v = np.linalg.eigh(sw)
    inv_sqrt = (v / np.sqrt(np.maximum(w, eps))) @ v.T
    matrix = inv_sqrt @ sb @ inv_sqrt
    values = np.clip(np.linalg.eigvalsh(0.5 * (matrix + matrix.T)), 0.0, None)[::-1]
    p = (values + eps) / (values + eps).sum()
    return values, float(np.exp(-(p * np.log(p)).sum()))


@pytest.fixture
def reference_lidar():
    """The numpy LiDAR reference (:func:`numpy_lidar`): ``reference_lidar(z) -> (eigenvalues, score)``."""
    return numpy_lidar


def invoke_cli(args: list) -> tuple[int, str, str]:
    """Run the CLI as `collapse-probe ARGS` would (exit codes from run_cli): (code, stdout, stderr)."""
    runner = CliRunner()
    with runner.isolation() as (stdout, stderr, _):
        try:
            code = run_cli(cli, [str(a) for a in args])
        except SystemExit as exit_:  # `check` exits 1 this way; `main()` turns codes into SystemExit too
            code = int(exit_.code)
    return code, stdout.getvalue().decode(), stderr.getvalue().decode()


@pytest.fixture(scope="session")
def invoke():
    """``invoke(args) -> (exit code, stdout, stderr)`` of ``collapse-probe ARGS``, in this process."""
    return invoke_cli
