"""train() and the demo leave every process-wide setting as the caller had it, on return and on raise."""

from __future__ import annotations

import random

import matplotlib
import numpy as np
import pytest
import torch

from collapse_probe._utils.global_state import restored_global_state
from collapse_probe.ssl import preset_config, train


def _tiny(out, **kw):
    base = dict(width=4, batch_size=32, max_steps_per_epoch=1, epochs=1, warmup_epochs=0, monitor_every=1,
                monitor_samples=64, projector_dim=8, log_every=0, threads=1, out=str(out))
    return preset_config("demo", **{**base, **kw})


class _Boom(Exception):
    pass


def _boom(state):
    raise _Boom


@pytest.fixture
def caller_settings():
    """Settings a notebook might have, none of them the trainer's own; put back after the test."""
    saved = (torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.get_float32_matmul_precision(), matplotlib.rcParams["lines.linewidth"])
    torch.set_num_threads(3)
    torch.backends.cudnn.benchmark = not saved[1]
    torch.set_float32_matmul_precision("high")
    matplotlib.rcParams["lines.linewidth"] = 7.0
    torch.manual_seed(4321)
    random.seed(4321)
    np.random.seed(4321)
    state = {
        "threads": 3, "benchmark": not saved[1], "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "precision": "high", "linewidth": 7.0, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(), "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(),
    }
    yield state
    torch.set_num_threads(saved[0])
    torch.backends.cudnn.benchmark = saved[1]
    torch.set_float32_matmul_precision(saved[3])
    torch.backends.cuda.matmul.allow_tf32 = saved[2]
    matplotlib.rcParams["lines.linewidth"] = saved[4]


def _assert_unchanged(state):
    assert torch.get_num_threads() == state["threads"]
    assert torch.backends.cudnn.benchmark == state["benchmark"]
    assert torch.backends.cuda.matmul.allow_tf32 == state["allow_tf32"]
    assert torch.get_float32_matmul_precision() == state["precision"]
    assert matplotlib.rcParams["lines.linewidth"] == state["linewidth"]
    assert torch.equal(torch.get_rng_state(), state["torch_rng"])
    assert random.getstate() == state["python_rng"]
    assert np.array_equal(np.random.get_state()[1], state["numpy_rng"])
    assert torch.get_default_dtype() == state["dtype"] and torch.is_grad_enabled() == state["grad"]


def test_train_restores_global_settings_when_it_returns(tmp_path, caller_settings):
    result = train(_tiny(tmp_path))
    assert (tmp_path / "spectra.png").exists() and result.metrics[-1]["epoch"] == 1
    _assert_unchanged(caller_settings)


def test_train_restores_global_settings_when_it_raises(tmp_path, caller_settings):
    with pytest.raises(_Boom):
        train(_tiny(tmp_path), callbacks={"on_epoch_end": [_boom]})
    _assert_unchanged(caller_settings)


def test_demo_restores_global_settings(tmp_path, caller_settings):
    from collapse_probe.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=str(tmp_path), variants=("directclr",), epochs=1, max_steps_per_epoch=1), progress=False)
    _assert_unchanged(caller_settings)


def test_restored_global_state_puts_back_every_flag_it_watches(caller_settings):
    with pytest.raises(_Boom), restored_global_state():
        torch.set_num_threads(1)
        torch.backends.cudnn.benchmark = not caller_settings["benchmark"]
        torch.set_float32_matmul_precision("highest")
        matplotlib.rcParams["lines.linewidth"] = 0.5
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        raise _Boom
    _assert_unchanged(caller_settings)
