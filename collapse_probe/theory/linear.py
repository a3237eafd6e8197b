"""Linear (and ReLU) toy encoders and the one SGD loop that trains them with InfoNCE.

The setting of the paper's simulations (Jing et al. 2022, sections 4-5): isotropic Gaussian
inputs, two views made by adding Gaussian noise, InfoNCE on unnormalised dot products
(:func:`collapse_probe.ssl.losses.info_nce`), plain SGD. Several models (one per noise level or
depth) are trained side by side on the same batches: their losses are summed, so one backward
pass serves them all, and their parameters never interact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from collapse_probe._utils.threads import single_threaded
from collapse_probe.ssl.losses import info_nce

__all__ = [
    "LinearChain",
    "decaying_init",
    "gaussian_inputs",
    "random_orthogonal",
    "train_contrastive",
    "two_layer_gradient_flow",
]


def gaussian_inputs(
    n_samples: int, dim: int, *, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(n_samples, dim) float32 isotropic standard Gaussian data drawn from ``generator``.

    >>> gaussian_inputs(5, 3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 3])
    """
    return torch.randn(n_samples, dim, generator=generator, device=device)


def random_orthogonal(dim: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """A Haar-random (dim, dim) orthogonal matrix: QR of a Gaussian matrix with R's signs fixed.

    >>> q = random_orthogonal(4, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(q @ q.T, torch.eye(4), atol=1e-5))
    True
    """
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, device=device))
    return q * torch.sign(torch.diagonal(r))


def decaying_init(
    dim: int, *, decay: float = 0.35, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``U diag(exp(-decay * k)) V^T``, k = 0..dim-1, with random orthogonal U and V.

    The paper's initialisation for the two-layer simulation: distinct singular values
    ``exp(-decay k)`` (1 down to exp(-5.25) ~ 0.005 for dim 16, decay 0.35).

    >>> w = decaying_init(4, decay=1.0, generator=torch.Generator().manual_seed(0))
    >>> [round(float(s), 3) for s in torch.linalg.svdvals(w)]
    [1.0, 0.368, 0.135, 0.05]
    """
    u = random_orthogonal(dim, generator=generator, device=device)
    v = random_orthogonal(dim, generator=generator, device=device)
    s = torch.exp(-decay * torch.arange(dim, dtype=torch.float32, device=device))
    return u @ torch.diag(s) @ v.T


class LinearChain(nn.Module):
    """``z = W_L ... W_2 W_1 x (+ b)``, square layers, optional ReLU between layers (not after the last).

    Args:
        weights: the initial (dim, dim) matrices W_1 .. W_L (copied into parameters).
        relu: put a ReLU after every layer but the last.
        bias: the initial (dim,) bias of the last layer (a trainable parameter); None: no bias,
            as in the paper's analysis. The public strong-augmentation script's ``nn.Linear``
            has one.

    >>> net = LinearChain([torch.eye(2), 2 * torch.eye(2)])
    >>> net(torch.ones(1, 2))
    tensor([[2., 2.]], grad_fn=<MmBackward0>)
    """

    def __init__(self, weights: Sequence[torch.Tensor], *, relu: bool = False, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in weights])
        self.relu = relu
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, weight in enumerate(self.weights):
            x = x @ weight.T
            if self.relu and index < len(self.weights) - 1:
                x = torch.relu(x)
        return x + self.bias if self.bias is not None else x

    def matrices(self) -> list[torch.Tensor]:
        """Detached copies of W_1 .. W_L."""
        return [w.detach().clone() for w in self.weights]


def train_contrastive(
    models: Sequence[nn.Module],
    data: torch.Tensor,
    noise_std: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 0.001,
    temperature: float = 0.1,
    generator: torch.Generator,
    callback: Callable[[int], None] | None = None,
    every: int = 10,
    symmetric: bool = True,
) -> list[float]:
    """Train each model with SGD on InfoNCE between two noisy views of the same batch.

    Each step draws ``batch_size`` rows of ``data`` (with replacement), and for model m the views
    ``x + noise_std[m] * eps1`` and ``x + noise_std[m] * eps2`` (eps standard Gaussian, fresh per
    view and model). The loss of model m is ``info_nce(f_m(x1), f_m(x2), temperature,
    normalize=False)``; the summed loss is stepped with ``SGD(lr)`` (no momentum, no decay).
    ``symmetric=False`` uses the row cross-entropy ``CE(z1 z2^T / t, I)`` alone, as the public
    toy scripts do.

    Args:
        models: M modules mapping (B, d) to (B, k).
        data: (N, d) training inputs.
        noise_std: (M, d) per-model, per-dimension noise standard deviation.
        steps: number of SGD steps.
        callback: called as ``callback(step)`` before the first step, after every ``every``-th
            step and after the last, so it sees steps 0, every, 2 every, ..., steps.
        generator: source of all randomness (on data's device).

    Returns:
        The M losses of the last step (floats).
    """
    if noise_std.shape != (len(models), data.shape[1]):
        raise ValueError(f"noise_std must be (M, d) = {(len(models), data.shape[1])}, got {tuple(noise_std.shape)}")
    params = [p for model in models for p in model.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr)
    noise_std = noise_std.to(device=data.device, dtype=data.dtype)
    # (128 x 16) matmuls: intra-op threads only add synchronisation (14-22x slower measured on a busy 2-core CPU)
    with single_threaded(data.device.type == "cpu"):
        return _sgd_loop(
            models, data, noise_std, optimizer, steps=steps, batch_size=batch_size,
            temperature=temperature, generator=generator, callback=callback, every=every, symmetric=symmetric,
        )


def _sgd_loop(
    models: Sequence[nn.Module],
    data: torch.Tensor,
    noise_std: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int,
    temperature: float,
    generator: torch.Generator,
    callback: Callable[[int], None] | None,
    every: int,
    symmetric: bool = True,
) -> list[float]:
    loss_fn = info_nce if symmetric else _row_info_nce
    views_shape = (len(models), batch_size, data.shape[1])
    losses = torch.full((len(models),), math.nan)
    if callback is not None:
        callback(0)
    for step in range(1, steps + 1):
        index = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=data.device)
        batch = data[index]
        x1 = batch + noise_std[:, None, :] * torch.randn(views_shape, generator=generator, device=data.device)
        x2 = batch + noise_std[:, None, :] * torch.randn(views_shape, generator=generator, device=data.device)
        per_model = torch.stack(
            [
                loss_fn(model(x1[m]), model(x2[m]), temperature=temperature, normalize=False)
                for m, model in enumerate(models)
            ]
        )
        optimizer.zero_grad(set_to_none=True)
        per_model.sum().backward()
        optimizer.step()
        if callback is not None and (step % every == 0 or step == steps):
            callback(step)
        if step == steps:
            losses = per_model.detach().cpu()
    return [float(v) for v in losses]


def _row_info_nce(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float, normalize: bool = False) -> torch.Tensor:
    """One-sided InfoNCE of the public toy scripts: ``CE(z1 z2^T / t, I)`` (rows only)."""
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = z1 @ z2.T / temperature
    return F.cross_entropy(logits, torch.arange(z1.shape[0], device=z1.device))


def two_layer_gradient_flow(
    w1: torch.Tensor, w2: torch.Tensor, x_matrix: torch.Tensor, *, dt: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler-integrate the two-layer flow of section 5 for a *fixed* Lemma-1 matrix X.

    For ``z = W2 W1 x`` and any loss with ``dL/dW = -W X`` at ``W = W2 W1``, the chain rule gives
    ``dL/dW1 = -W2^T W2 W1 X`` and ``dL/dW2 = -W2 W1 X W1^T``, so gradient flow is

        dW1/dt = W2^T W2 W1 X,     dW2/dt = W2 W1 X W1^T.

    Holding X fixed isolates the mechanism of Theorems 2-3 (alignment, rich-get-richer growth)
    from the changes of X during contrastive training. Each singular value grows at a rate that
    scales with itself, so growth is super-exponential: keep ``dt * steps`` moderate.

    Returns:
        The final (W1, W2), in the inputs' dtype.

    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> w1, w2 = two_layer_gradient_flow(eye, eye, eye, dt=1e-4, steps=1000)
    >>> round(float(w1[0, 0]), 3)  # dw/dt = w^3 from w = 1: exactly 1 / sqrt(1 - 2t) = 1.118 at t = 0.1
    1.118
    """
    for _ in range(steps):
        product = w2 @ w1
        w1, w2 = w1 + dt * (w2.T @ product @ x_matrix), w2 + dt * (product @ x_matrix @ w1.T)
    return w1, w2
