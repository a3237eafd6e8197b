"""Forward hooks on named modules, always removed, and pooling of captured outputs to (B, D)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def from_transformers(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face transformers class (by its module path; no import)."""
    return type(module).__module__.startswith("transformers.")


#: Modules whose 3-d output is (B, C, L): channels are the feature axis, L is pooled.
CHANNELS_FIRST_1D = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d,
                     nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LazyConv1d)


def is_channels_first(module: nn.Module) -> bool:
    """Whether ``module``'s 3-d output is (B, C, L) of a 1-d convolution rather than (B, T, D)
    tokens: the module, or the last of its submodules that has no children (a ``Sequential``
    ending in a ``Conv1d`` block), is a 1-d convolution, pooling or its norm. An activation or
    dropout at the end is looked through.

    >>> is_channels_first(nn.Sequential(nn.Conv1d(3, 16, 3), nn.ReLU())), is_channels_first(nn.Linear(2, 2))
    (True, False)
    """
    if isinstance(module, CHANNELS_FIRST_1D):
        return True
    shape_free = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Dropout, nn.Identity, nn.Sigmoid)
    leaves = [m for m in module.modules() if not list(m.children())]
    for leaf in reversed(leaves):
        if isinstance(leaf, shape_free):
            continue
        return isinstance(leaf, CHANNELS_FIRST_1D)
    return False


def _is_head_field(key: str) -> bool:
    return key == "loss" or key.endswith("loss") or "logits" in key


def pick_tensor(output: Any, where: str, *, first_of_tuple: bool = False) -> Any:
    """The one tensor to probe in a module output.

    A dict or a transformers ``ModelOutput`` (an ``OrderedDict`` whose unset fields are absent)
    gives its ``last_hidden_state`` when it has one, else its first tensor field with a batch
    axis that is not a loss or logits (a head's output is never "the model output" of an
    encoder: a mapping with nothing else is refused). A tuple gives
    element 0 only when ``first_of_tuple`` (Hugging Face layers return ``(hidden_states,
    attentions, ...)``; ``return_dict=False`` models return ``(last_hidden_state, ...)``): any
    other tuple is an error, since its first element may be logits or one of two views.

    >>> pick_tensor({"pooler_output": torch.ones(2, 3), "last_hidden_state": torch.zeros(2, 4, 3)}, "x").shape
    torch.Size([2, 4, 3])
    """
    if isinstance(output, Mapping):
        if isinstance(output.get("last_hidden_state"), torch.Tensor):
            return output["last_hidden_state"]
        for key, value in output.items():
            if isinstance(value, torch.Tensor) and not _is_head_field(str(key)) and value.ndim >= 2:
                return value
        raise CollapseProbeError(
            f"{where} holds no embeddings (fields: {', '.join(map(str, output))}); a loss or a head's logits is "
            "not an encoder's output: probe the base model (module=..., a Hugging Face model's base_model), "
            "name a layer, or pass output_fn")
    if first_of_tuple and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return output


def pool_output(output: Any, pool: str, where: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce one module output to (B, D).

    (B, D) passes through; (B, C, H, W) is averaged (``avg``) or maxed (``max``) over H, W, or
    flattened (``flatten``); (B, T, D) tokens are averaged over T (``avg``/``max``) or token 0 is
    taken (``cls``). With an attention ``mask`` (B, T) (1 = real token, 0 = padding), ``avg`` is
    sentence-transformers' mean pooling, ``sum_t(h_t m_t) / max(sum_t m_t, 1e-9)`` (summed in
    float32 for half-precision outputs), and ``max`` ignores padding (filled with -inf first).
    Tuples and dicts are an error that says how to pick one tensor (see :func:`pick_tensor`).

    >>> h = torch.tensor([[[1.0], [3.0], [100.0]]])     # one sequence, 2 real tokens + 1 pad
    >>> pool_output(h, "avg", "x", mask=torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    if isinstance(output, (tuple, list, Mapping)):
        kind = "dict" if isinstance(output, Mapping) else type(output).__name__
        raise CollapseProbeError(
            f"{where} returns a {kind}, not a tensor: pass output_fn=lambda out: out[...] to pick the tensor, "
            "probe one of its submodules with layers=[...], or wrap the model so that forward returns it"
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
        if mask is not None:
            return _masked_pool(output, mask, pool, where)
        return output.mean(dim=1) if pool == "avg" else output.amax(dim=1)
    raise CollapseProbeError(f"{where} output has shape {tuple(output.shape)}; use pool='flatten' for it")


def _masked_pool(tokens: torch.Tensor, mask: torch.Tensor, pool: str, where: str) -> torch.Tensor:
    """Masked mean or max over T, written as sentence-transformers' ``Pooling`` writes it."""
    if tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise CollapseProbeError(
            f"{where} gives tokens {tuple(tokens.shape)} but the batch's attention_mask is {tuple(mask.shape)}: "
            "use pool='cls', or return a pooled (B, D) tensor from output_fn (it is used as is)"
        )
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    if pool == "max":
        return tokens.masked_fill(weights == 0, float("-inf")).amax(dim=1)
    summed = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
    return (tokens * weights).sum(dim=1, dtype=summed) / weights.sum(dim=1, dtype=summed).clamp(min=1e-9)


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
