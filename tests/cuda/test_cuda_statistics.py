"""The statistics on a GPU: CUDA accumulator == CPU accumulator, bf16 probes, batched solves, no host sync.

Same batches on both devices; eigenvalues at or above 1e-8 x the largest must agree to 1e-9
relative. The test data keep every such eigenvalue well conditioned (signal eigenvalues from 1 to
1e-3 of the largest; collapsed directions at float32 round-off, ~1e-14, far below the floor), so
the bound tests the code rather than float64 round-off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from collapse_probe import CovarianceAccumulator, spectrum
from collapse_probe.metrics.solve import solve_spectra

pytestmark = pytest.mark.cuda

DIM = 48


def _mixing(dim: int, rank: int | None, seed: int) -> torch.Tensor:
    """(dim, dim) map giving covariance eigenvalues 1 .. 1e-3 in a random basis (zero beyond rank)."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, -1.5, dim, dtype=torch.float64)
    if rank is not None:
        scales[rank:] = 0.0
    return scales[:, None] * basis.T


def _batches(*, rank: int | None = None, seed: int = 0, sizes=(256, 256, 100, 1, 300, 256, 77)) -> list[torch.Tensor]:
    """float32 CPU batches of uneven sizes (a batch of one row included), mean 0.5 (centring matters;
    a larger mean would push the uncentred spectra's signal eigenvalues towards round-off)."""
    g = torch.Generator().manual_seed(seed + 1)
    mix = _mixing(DIM, rank, seed)
    return [(torch.randn(n, DIM, generator=g, dtype=torch.float64) @ mix + 0.5).float() for n in sizes]


def _accumulate(batches, device, **kwargs) -> CovarianceAccumulator:
    acc = CovarianceAccumulator(DIM, device=device, **kwargs)
    for z in batches:
        acc.update(z.to(device))
    return acc


@pytest.mark.parametrize("rank", [None, 32], ids=["full-rank", "collapsed"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("center", [True, False])
def test_cuda_accumulator_equals_cpu_float32(tools, rank, normalize, center):
    batches = _batches(rank=rank)
    gpu = _accumulate(batches, "cuda", normalize=normalize, center=center)
    cpu = _accumulate(batches, "cpu", normalize=normalize, center=center)
    assert gpu.m2.device.type == "cuda" and gpu.m2.dtype == torch.float64
    got, want = gpu.compute(), cpu.compute()
    assert got.n_samples == want.n_samples == sum(len(b) for b in batches)
    tools.assert_eigenvalues_close(got.eigenvalues, want.eigenvalues, what="CUDA vs CPU eigenvalues")
    tools.assert_eigenvalues_close(got.uncentered_singular_values, want.uncentered_singular_values,
                                   what="CUDA vs CPU uncentred singular values")
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.variances, want.variances, rtol=1e-10, atol=0.0)
    # and both against an independent float64 reference on the concatenated rows
    z = torch.cat(batches).double()
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    tools.assert_eigenvalues_close(got.eigenvalues, tools.numpy_eigenvalues(z.numpy(), center=center, ddof=int(center)),
                                   what="CUDA vs numpy")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_accumulator_equals_cpu_on_autocast_embeddings(tools, dtype):
    """Embeddings made under autocast (bf16/fp16 tensors), some folded in inside the autocast region."""
    torch.manual_seed(0)
    layer = nn.Linear(DIM, DIM).cuda()
    with torch.no_grad():  # an orthogonal map keeps the spectrum well conditioned
        layer.weight.copy_(torch.linalg.qr(torch.randn(DIM, DIM, dtype=torch.float64))[0].float())
    gpu = CovarianceAccumulator(DIM, device="cuda")
    cpu = CovarianceAccumulator(DIM)
    reduced = []
    for i, x in enumerate(_batches()):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            z = layer(x.cuda())
            assert z.dtype == dtype
            if i % 2:  # update() called inside the autocast region must not change its float64 maths
                gpu.update(z)
        if not i % 2:
            gpu.update(z)
        cpu.update(z.cpu())
        reduced.append(z.cpu())
    got, want = gpu.compute(), cpu.compute()
    name = str(dtype).removeprefix("torch.")
    assert got.input_dtype == want.input_dtype == name and got.dtype == "float64"
    tools.assert_eigenvalues_close(got.eigenvalues, want.eigenvalues, what=f"{name}: CUDA vs CPU")
    tools.assert_eigenvalues_close(got.eigenvalues, tools.numpy_eigenvalues(torch.cat(reduced).double().numpy()),
                                   what=f"{name}: CUDA vs numpy")


def test_cuda_accumulator_skip_nonfinite_and_state_round_trip(tools):
    batches = _batches()
    poisoned = [b.clone() for b in batches]
    poisoned[1][3, 5] = float("nan")
    poisoned[4][0, 0] = float("inf")
    gpu = _accumulate(poisoned, "cuda", skip_nonfinite=True)
    clean = [b[torch.isfinite(b).all(dim=1)] for b in poisoned]
    cpu = _accumulate(clean, "cpu")
    got = gpu.compute()
    assert got.n_skipped_nonfinite == 2 and got.n_samples == cpu.compute().n_samples
    tools.assert_eigenvalues_close(got.eigenvalues, cpu.compute().eigenvalues, what="skip_nonfinite on CUDA")
    # CUDA state -> CPU accumulator and back: same statistics
    moved = CovarianceAccumulator(DIM, skip_nonfinite=True)
    moved.load_state_dict(gpu.state_dict())
    tools.assert_eigenvalues_close(moved.compute().eigenvalues, got.eigenvalues, what="state_dict CUDA -> CPU")
    # merge across devices: two CUDA halves merged == one stream
    a, b = _accumulate(batches[:3], "cuda"), _accumulate(batches[3:], "cuda")
    a.merge(b)
    tools.assert_eigenvalues_close(a.compute().eigenvalues, _accumulate(batches, "cpu").compute().eigenvalues,
                                   what="merged CUDA halves vs CPU")


def test_cuda_nonfinite_input_is_reported_after_the_stream():
    from collapse_probe.errors import NonFiniteEmbeddingError

    batches = [b.cuda() for b in _batches()]
    batches[2][0, 0] = float("nan")
    acc = CovarianceAccumulator(DIM, device="cuda", layer="head")
    for z in batches:
        acc.update(z)  # no exception per batch: the flag stays on the device
    with pytest.raises(NonFiniteEmbeddingError, match="batch 2"):
        acc.compute()


# ----------------------------------------------------------------------------------- no host sync


def test_sync_debug_mode_catches_a_sync(tools):
    """The control: the mode the next tests rely on does raise on a host sync."""
    x = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError), tools.no_host_sync():
        x.sum().item()


@pytest.mark.parametrize("skip_nonfinite", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_accumulator_update_never_syncs(tools, skip_nonfinite, normalize, dtype):
    batches = [b.to("cuda", dtype) for b in _batches()]
    acc = CovarianceAccumulator(DIM, device="cuda", skip_nonfinite=skip_nonfinite, normalize=normalize)
    acc.update(batches[0])  # first call: cuBLAS handle, allocator
    torch.cuda.synchronize()
    with tools.no_host_sync():
        for z in batches[1:]:
            acc.update(z)
    assert acc.compute().n_samples == sum(len(b) for b in batches)  # finalize syncs once, outside


class _Net(nn.Module):
    """A small CNN: conv + BatchNorm + pooled features + a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _images(n_batches: int = 6, batch: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(batch, 3, 16, 16, generator=g).cuda() for _ in range(n_batches)]


@pytest.mark.parametrize("precision", [None, "bf16", "fp16"])
def test_spectrum_loop_never_syncs_per_batch(tools, precision):
    """Sync-debug "error" mode while spectrum() iterates the loader; its one sync is at the end."""
    torch.manual_seed(0)
    model = _Net().cuda()
    batches = _images()
    layers = ["features", "features.3", "pool", "fc"]
    spectrum(model, batches[:1], layers=layers, precision=precision, progress=False)  # warm-up (cuDNN, cuBLAS)
    torch.cuda.synchronize()
    result = spectrum(model, tools.sync_checked(batches), layers=layers, precision=precision, progress=False)
    assert torch.cuda.get_sync_debug_mode() == 0  # the wrapper switched the mode off before the solve
    assert {name: s.n_samples for name, s in result.items()} == dict.fromkeys(layers, 6 * 64)


def test_spectrum_bf16_on_cuda_matches_a_hand_written_reference(tools):
    """precision="bf16": autocast forward, bf16 embeddings, float64 statistics on the GPU."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # identical bf16 outputs
    torch.manual_seed(0)
    model = _Net().cuda().eval()
    batches = _images()
    result = spectrum(model, batches, layers=["features", "fc"], precision="bf16", progress=False)

    captured: dict[str, list[torch.Tensor]] = {"features": [], "fc": []}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: captured[name].append(out.mean(dim=(2, 3)) if out.ndim == 4 else out))
        for name in captured]
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for x in batches:
                model(x)
    finally:
        for hook in hooks:
            hook.remove()
    for name, outputs in captured.items():
        assert outputs[0].dtype == torch.bfloat16
        s = result[name]
        assert (s.input_dtype, s.dtype, s.n_samples, s.layer) == ("bfloat16", "float64", 6 * 64, name)
        z = torch.cat(outputs).double().cpu().numpy()
        tools.assert_eigenvalues_close(s.eigenvalues, tools.numpy_eigenvalues(z), rtol=1e-7, floor=1e-6,
                                       what=f"bf16 spectrum of {name}")
        np.testing.assert_allclose(s.mean.numpy(), z.mean(axis=0), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------- solve_spectra


def test_solve_spectra_stacks_on_cuda_and_matches_cpu(tools):
    """Accumulators of two sizes and both conventions, plus raw matrices: one stacked eigvalsh per
    (d, device, dtype) group on the GPU; every result equals the CPU path's."""
    dims = (32, 32, 48, 48)
    g = torch.Generator().manual_seed(7)
    streams = [[torch.randn(200, d, generator=g) @ torch.diag(torch.logspace(0, -1, d)) for _ in range(3)] for d in dims]
    conventions = [dict(center=True), dict(center=False), dict(center=True, normalize=True), dict(center=False)]

    def accumulators(device):
        out = []
        for d, stream, kwargs in zip(dims, streams, conventions, strict=True):
            acc = CovarianceAccumulator(d, device=device, **kwargs)
            for z in stream:
                acc.update(z.to(device))
            out.append(acc)
        return out

    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    matrix = a @ a.T
    gpu_items = [*accumulators("cuda"), matrix.cuda(), (2 * matrix).cuda()]
    cpu_items = [*accumulators("cpu"), matrix, 2 * matrix]
    got, want = solve_spectra(gpu_items), solve_spectra(cpu_items)
    for i, (g_item, w_item) in enumerate(zip(got, want, strict=True)):
        if isinstance(w_item, torch.Tensor):  # a raw matrix: eigenvalues, on the input's device
            assert g_item.device.type == "cuda"
            tools.assert_eigenvalues_close(g_item, w_item, what=f"matrix item {i}")
            reference = np.linalg.eigvalsh((matrix if i == 4 else 2 * matrix).numpy())[::-1]
            tools.assert_eigenvalues_close(g_item, reference, what=f"matrix item {i} vs numpy")
        else:  # a Spectrum: always CPU float64
            assert g_item.eigenvalues.device.type == "cpu" and g_item.eigenvalues.dtype == torch.float64
            assert (g_item.center, g_item.normalize, g_item.n_samples) == (w_item.center, w_item.normalize, w_item.n_samples)
            tools.assert_eigenvalues_close(g_item.eigenvalues, w_item.eigenvalues, what=f"spectrum item {i}")
            tools.assert_eigenvalues_close(g_item.uncentered_singular_values, w_item.uncentered_singular_values,
                                           what=f"singular values item {i}")
