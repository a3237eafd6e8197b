"""Forward hooks on named modules, always removed, and pooling of captured outputs to (B, D)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError

POOLS = ("avg", "max", "flatten", "cls")


def resolve_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map layer names (as ``model.named_modules()`` names them) to modules; close matches on a typo."""
    available = dict(model.named_modules())
    resolved = {}
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, [n for n in available if n], n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; list them with `collapse-probe layers`"
            raise CollapseProbeError(f"no module named {name!r} in {type(model).__name__}{hint}")
        resolved[name] = available[name]
    return resolved


def pool_output(output: Any, pool: str, where: str) -> torch.Tensor:
    """Reduce one module output to (B, D).

    (B, D) passes through; (B, C, H, W) is averaged (``avg``) or maxed (``max``) over H, W, or
    flattened (``flatten``); (B, T, D) tokens are averaged over T (``avg``/``max``) or token 0 is
    taken (``cls``). Tuples and dicts are an error that says how to pick one tensor.
    """
    if isinstance(output, (tuple, list, dict)):
        kind = "dict" if isinstance(output, dict) else type(output).__name__
        raise CollapseProbeError(
            f"{where} returns a {kind}, not a tensor: probe one of its submodules with layers=[...], "
            "or wrap the model so that forward returns the tensor to probe"
        )
    if not isinstance(output, torch.Tensor):
        raise CollapseProbeError(f"{where} returned {type(output).__name__}, not a tensor")
    if pool not in POOLS:
        raise CollapseProbeError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
    if output.ndim == 2:
        return output
    if output.ndim < 2:
        raise CollapseProbeError(f"{where} output has shape {tuple(output.shape)}; expected (batch, features, ...)")
    if pool == "flatten":
        return output.flatten(1)
    if output.ndim == 4:
        if pool == "cls":
            raise CollapseProbeError(f"pool='cls' needs (B, T, D) token outputs; {where} gives {tuple(output.shape)}")
        return output.mean(dim=(2, 3)) if pool == "avg" else output.amax(dim=(2, 3))
    if output.ndim == 3:
        if pool == "cls":
            return output[:, 0]
        return output.mean(dim=1) if pool == "avg" else output.amax(dim=1)
    raise CollapseProbeError(f"{where} output has shape {tuple(output.shape)}; use pool='flatten' for it")


class CallCounts(dict):
    """How many times each hooked module ran since the last :meth:`start_forward` (name -> calls)."""

    def start_forward(self) -> None:
        """Zero every count: call it before each forward pass of the model."""
        self.clear()


@contextmanager
def capture_outputs(modules: dict[str, nn.Module], sink: Callable[[str, Any], None]) -> Iterator[CallCounts]:
    """Call ``sink(name, output)`` after each named module's forward; hooks removed on every exit.

    Yields a :class:`CallCounts`: a module that runs more than once per model forward (siamese
    views, a weight-tied block) shows a count above one, so callers can refuse or choose a call.
    When the sink runs, ``counts[name] - 1`` is the index of the current call.
    """
    counts = CallCounts()

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            counts[name] = counts.get(name, 0) + 1
            sink(name, output)  # a hook that returned a value would replace the module's output

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's previous ``training`` flag on exit."""
    previous = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in previous:
            module.training = training
