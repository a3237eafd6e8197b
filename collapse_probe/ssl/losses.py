"""Contrastive losses as pure functions of two views' embeddings.

Two losses that the literature often conflates:

* :func:`info_nce` -- the DirectCLR public code's loss: symmetric, *cross-view* negatives only.
  ``logits = z1 @ z2.T / t``; ``loss = (CE(logits, arange) + CE(logits.T, arange)) / 2``.
* :func:`nt_xent` -- SimCLR's NT-Xent (Chen et al. 2020): the 2B x 2B similarity matrix of both
  views, so each anchor also has the ``B - 1`` *same-view* negatives; self-similarity masked.

Both take already-gathered global batches (see ``collapse_probe.ssl.distributed`` for the
all-gather with gradient); neither normalises unless asked, so the theory simulations (unnormalised
dot products) and the trainer (cosine similarity) share one formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    normalize: bool = True,
) -> torch.Tensor:
    """Symmetric cross-view InfoNCE, as in the DirectCLR public code.

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of each is the same image.
        temperature: the softmax temperature t (0.1 in the paper).
        normalize: L2-normalise rows first (cosine similarity); False gives raw dot products,
            as in the paper's linear-model simulations.

    Returns:
        A scalar: ``(CE(z1 z2^T / t, I) + CE(z2 z1^T / t, I)) / 2``.

    >>> z = torch.eye(4)
    >>> round(float(info_nce(z, z, temperature=0.1)), 4)  # perfectly aligned, orthogonal negatives
    0.0001
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"info_nce expects two (B, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if normalize:
        z1 = F.normalize(z1, dim=1)
        z2 = F.normalize(z2, dim=1)
    logits = z1 @ z2.T / temperature
    targets = torch.arange(z1.shape[0], device=z1.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    normalize: bool = True,
) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1), averaged over all 2B anchors.

    For anchor i with positive j(i): ``-log exp(s_ij / t) / sum_{k != i} exp(s_ik / t)`` where
    ``s`` is the cosine similarity over the 2B stacked embeddings ``[z1; z2]``.

    Args:
        z1, z2: (B, D) embeddings of the two views.
        temperature: t.
        normalize: L2-normalise rows first (SimCLR does).

    >>> z = torch.eye(4)
    >>> round(float(nt_xent(z, z, temperature=0.1)), 4)
    0.0003
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent expects two (B, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    batch = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    if normalize:
        z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    # B..2B-1, 0..B-1, made on the device (a host-to-device copy would sync the GPU every step)
    targets = (torch.arange(2 * batch, device=z.device) + batch) % (2 * batch)
    return F.cross_entropy(logits, targets)
