"""Token rows: one row per token (or spatial position) instead of one per input.

For a (B, T, D) token output, ``tokens="all"`` makes every token a sample, ``"patch"`` the patch
tokens only (``tokens[:, P:]``), ``"prefix"`` the prefix tokens only (``tokens[:, :P]``: the CLS
token plus any register or distillation tokens). Padding is excluded by the batch's attention
mask. A (B, C, H, W) map gives one row per spatial position (``tokens="all"`` only: a map has no
prefix). The prefix count P comes from ``prefix_tokens`` or from the model, where it says:

* timm: ``num_prefix_tokens`` on the model (CLS + registers; 0 for a model without a CLS token);
* torchvision's ``VisionTransformer``: its ``class_token`` (one);
* Hugging Face: the embeddings' ``cls_token`` (one), ``distillation_token`` (one more, DeiT) and
  ``register_tokens`` (their count), or ``config.num_register_tokens`` + 1.

A model that says nothing is an error for ``"patch"`` and ``"prefix"``, never a guess.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError

TOKEN_ROWS = (None, "all", "patch", "prefix")


def _hugging_face_prefix(model: nn.Module) -> int | None:
    for module in model.modules():
        cls_token = getattr(module, "cls_token", None)
        if isinstance(cls_token, torch.Tensor | nn.Parameter) and hasattr(module, "patch_embeddings"):
            registers = getattr(module, "register_tokens", None)
            count = 1 + (1 if isinstance(getattr(module, "distillation_token", None), torch.Tensor) else 0)
            return count + (int(registers.shape[1]) if isinstance(registers, torch.Tensor) else 0)
    config = getattr(model, "config", None)
    registers = getattr(config, "num_register_tokens", None)
    return None if registers is None else 1 + int(registers)


def model_prefix_tokens(model: nn.Module) -> int | None:
    """How many prefix tokens (CLS, registers, distillation) the model says its token outputs
    start with; None when it does not say.

    >>> import torchvision
    >>> model_prefix_tokens(torchvision.models.VisionTransformer(32, 16, 1, 2, 8, 8)), model_prefix_tokens(nn.Linear(2, 2))
    (1, None)
    """
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int):
            return count
    for module in model.modules():
        if type(module).__name__ == "VisionTransformer" and isinstance(getattr(module, "class_token", None),
                                                                       torch.Tensor):
            return 1
    return _hugging_face_prefix(model)


def resolve_prefix_tokens(model: nn.Module, tokens: str | None, prefix_tokens: int | None) -> int | None:
    """The prefix count to split on for ``tokens`` ("patch"/"prefix"), or a one-line refusal; for
    ``"all"`` the count the model says (recorded only), for ``None`` nothing."""
    if tokens is None:
        return prefix_tokens
    if tokens == "all":
        return prefix_tokens if prefix_tokens is not None else model_prefix_tokens(model)
    if prefix_tokens is not None:
        return int(prefix_tokens)
    found = model_prefix_tokens(model)
    if found is None:
        raise CollapseProbeError(
            f"tokens={tokens!r} needs the number of prefix tokens (CLS + registers), and {type(model).__name__} does "
            "not say: pass prefix_tokens=N (CLI: --prefix-tokens N)")
    return found


def token_rows(output: torch.Tensor, tokens: str, prefix: int | None, mask: torch.Tensor | None,
               where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, owner)``: (R, D) token rows of a (B, T, D) output (or the (B H W, C) positions of a
    (B, C, H, W) map) and, for each row, the index of its input in the batch (R,).

    >>> h = torch.arange(12.0).reshape(1, 4, 3)              # one input, 4 tokens (CLS first), D = 3
    >>> token_rows(h, "patch", 1, None, "x")[0].shape, token_rows(h, "prefix", 1, None, "x")[0].tolist()
    (torch.Size([3, 3]), [[0.0, 1.0, 2.0]])
    """
    if output.ndim == 4:
        if tokens != "all":
            raise CollapseProbeError(f"{where} is a (B, C, H, W) map: it has no prefix tokens; use tokens='all' "
                                     "(one row per spatial position)")
        b, c, h, w = output.shape
        rows = output.permute(0, 2, 3, 1).reshape(b * h * w, c)
        return rows, torch.arange(b, device=output.device).repeat_interleave(h * w)
    if output.ndim != 3:
        raise CollapseProbeError(f"tokens={tokens!r} needs (B, T, D) tokens or (B, C, H, W) maps; {where} gives "
                                 f"{tuple(output.shape)}")
    b, t, _ = output.shape
    keep = torch.ones(b, t, dtype=torch.bool, device=output.device)
    if mask is not None:
        if tuple(mask.shape) != (b, t):
            raise CollapseProbeError(f"{where} gives tokens {tuple(output.shape)} but the batch's attention_mask is "
                                     f"{tuple(mask.shape)}")
        keep = mask.to(torch.bool)
    if tokens in ("patch", "prefix"):
        if prefix is None or not 0 <= prefix <= t:
            raise CollapseProbeError(f"prefix_tokens={prefix} does not fit {where}'s {t} tokens")
        span = torch.arange(t, device=output.device) < prefix
        keep = keep & (span if tokens == "prefix" else ~span)
    if mask is None and tokens == "all":  # every token: a view, no copy
        return output.reshape(b * t, -1), torch.arange(b, device=output.device).repeat_interleave(t)
    owner = torch.arange(b, device=output.device).unsqueeze(1).expand(b, t)[keep]
    return output[keep], owner


def describe_tokens(tokens: str | None, prefix: int | None) -> dict[str, Any]:
    """What a row is, as recorded in the result's ``extra`` and its JSON."""
    if tokens is None:
        return {}
    return {"rows": "tokens", "tokens": tokens, "prefix_tokens": prefix}
