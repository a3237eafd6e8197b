"""The trainer on a GPU (bf16 autocast + channels_last), and the NCCL code paths with one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import spectrum
from collapse_probe._utils.ranks import is_distributed
from collapse_probe.ssl import preset_config, train

pytestmark = pytest.mark.cuda


def _config(out, **overrides):
    """One short epoch of a small-stem ResNet-18 on the built-in digits, monitor on (NCCL all-reduces)."""
    base = dict(arch="resnet18", small_stem=True, image_size=16, batch_size=64, max_steps_per_epoch=3, epochs=1,
                warmup_epochs=0.5, monitor_every=1, monitor_samples=256, projector_dim=32, log_every=2,
                device="cuda", precision="bf16", channels_last=True, out=str(out))
    return preset_config("demo", **{**base, **overrides})


def _first_conv_probe(seen: dict):
    """An on_train_start callback hooking the first Conv2d: records what training feeds it."""

    def callback(state) -> None:
        conv = next(m for m in state.model.modules() if isinstance(m, nn.Conv2d))

        def hook(module, inputs, output):
            if module.training:  # the monitor's eval-mode passes are fp32 and not the point here
                seen.setdefault("input_channels_last", []).append(
                    inputs[0].is_contiguous(memory_format=torch.channels_last))
                seen.setdefault("output_dtype", []).append(output.dtype)
                seen["weight_channels_last"] = module.weight.is_contiguous(memory_format=torch.channels_last)

        conv.register_forward_hook(hook)

    return callback


def _check_run(result, seen) -> None:
    assert [row["epoch"] for row in result.metrics] == [1]
    row = result.metrics[0]
    assert math.isfinite(row["loss"]) and row["step"] == 3
    assert "representation/effective_rank" in row and "embedding/effective_rank" in row  # the monitor ran
    assert seen["output_dtype"] == [torch.bfloat16] * 3  # bf16 autocast in every training step
    assert all(seen["input_channels_last"]) and seen["weight_channels_last"]
    assert result.checkpoint_path.exists()
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in result.model.parameters())


def test_one_epoch_bf16_channels_last(tmp_path):
    seen: dict = {}
    result = train(_config(tmp_path), callbacks={"on_train_start": [_first_conv_probe(seen)]})
    _check_run(result, seen)


def test_one_epoch_in_an_nccl_process_group(tmp_path, nccl_group):
    """World size 1 over NCCL: the monitor's spectrum all-reduces its statistics through NCCL."""
    assert is_distributed() and torch.distributed.get_backend() == "nccl"
    seen: dict = {}
    result = train(_config(tmp_path), callbacks={"on_train_start": [_first_conv_probe(seen)]})
    _check_run(result, seen)
    assert is_distributed()  # the trainer did not tear down a group it did not create


def test_spectrum_in_an_nccl_process_group(tools, nccl_group):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24)).cuda()
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(100, 16, generator=g).cuda() for _ in range(5)]
    result = spectrum(model, batches, layers=["0", "2"], progress=False)
    with torch.no_grad():
        hidden = [model[0](x) for x in batches]
        outputs = {"0": torch.cat(hidden), "2": torch.cat([model[2](model[1](h)) for h in hidden])}
    for name, z in outputs.items():
        s = result[name]
        assert s.n_samples == 500 and s.layer == name
        tools.assert_eigenvalues_close(s.eigenvalues, tools.numpy_eigenvalues(z.double().cpu().numpy()),
                                       rtol=1e-6, floor=1e-6, what=f"NCCL spectrum of layer {name}")
        np.testing.assert_allclose(s.mean.numpy(), z.double().mean(0).cpu().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss", ["info_nce", "nt_xent"])
def test_training_steps_never_sync(tools, tmp_path, loss):
    """Steps 2..3 of an epoch (device augmentation, bf16 forward, loss, backward, LARS) run with
    the sync-debug mode at "error"; the epoch's one sync (loss, finiteness flag) comes after."""
    steps = 3

    def on_step_end(state) -> None:
        if state.step == 1:  # first step: cuDNN/cuBLAS set-up, augmentation constants copied once
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif state.step == steps:
            torch.cuda.set_sync_debug_mode(0)

    result = train(_config(tmp_path, monitor_every=0, log_every=0, max_steps_per_epoch=steps, loss=loss),
                   callbacks={"on_step_end": [on_step_end]})
    assert torch.cuda.get_sync_debug_mode() == 0
    assert math.isfinite(result.metrics[0]["loss"])


def test_tensor_stream_and_batch_augment_never_sync(tools):
    from collapse_probe.ssl.data import TensorStream, builtin_tensors
    from collapse_probe.ssl.distributed import DistInfo

    images, labels = builtin_tensors("builtin:digits", "train")
    config = _config("unused", max_steps_per_epoch=4)
    stream = TensorStream(images, labels, config, DistInfo(), torch.device("cuda"))
    batches = stream.epoch(0)
    next(batches)  # the epoch's permutation is copied to the GPU once, at its start
    with tools.no_host_sync():
        for x1, x2, y in batches:
            assert x1.device.type == x2.device.type == y.device.type == "cuda"
            assert x1.shape == x2.shape == (64, 3, 16, 16)
