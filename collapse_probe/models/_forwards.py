"""Telling apart architectures whose keys and shapes a state_dict fits equally: run each one.

Names and shapes cannot tell timm's ``resnetblur18`` from torchvision's ``resnet18`` (the blur
filter is a fixed, unsaved buffer), nor ``efficientnet_b0`` from ``tf_efficientnet_b0`` ('same'
padding), yet their forwards differ. So each such candidate is built for real on the CPU (its
buffers computed, its parameters left for the file's tensors to fill), its final classifier
replaced by ``nn.Identity`` as loading does, the *same* fitted tensors loaded, and run in eval
mode on one seeded random input ``x ~ N(0, 1)`` of shape ``(2, 3, S, S)`` (``S = 64``, or the size
the first candidate declares when it refuses 64, as fixed-size ViTs do). Two candidates are the
same architecture when their outputs have the same shape and

    max |a - b| <= RTOL * max(max |a|, max |b|)        (finite entries; non-finite ones must agree)

that is, equal to float rounding relative to the output's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from collapse_probe._utils.threads import single_threaded
from collapse_probe.models._registry import build_encoder, strip_classifier

#: Relative tolerance of "the same output" (float32 rounding of one network is ~1e-6 of the scale).
RTOL = 1e-4
#: The input side tried first; a model that refuses it (a fixed-size ViT) gets its declared size, else 224.
SMALL_SIZE = 64
BATCH = 2


class _SkipParameterInit(TorchFunctionMode):
    """In-place ops on a ``Parameter`` (initialisers) are skipped while a candidate is built.

    Every parameter of a fitting candidate is overwritten by the file's tensor right after, so
    initialising it is wasted time (seconds for a ViT's truncated normals); buffers are computed
    as usual, which matters: the blur filter that makes resnetblur differ is one.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if args and isinstance(args[0], nn.Parameter) and name.endswith("_") and not name.endswith("__"):
            return args[0]
        return func(*args, **(kwargs or {}))


def real_model(spec: str) -> nn.Module:
    """``library/name`` built on the CPU (parameters left uninitialised), its classifier stripped."""
    with _SkipParameterInit():
        model = build_encoder(spec)
    strip_classifier(model)
    return model


def _declared_size(model: nn.Module) -> int:
    """The input side a model says it wants (timm's ``pretrained_cfg``, torchvision ViT's ``image_size``), else 224."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    size = getattr(model, "image_size", None)
    return size if isinstance(size, int) else 224


def _flat_output(output: object) -> torch.Tensor:
    """A model's output as one float64 tensor (the tensors of a tuple / dict output concatenated)."""
    if isinstance(output, torch.Tensor):
        return output.detach().double()
    parts = list(output.values()) if isinstance(output, Mapping) else list(output)  # type: ignore[call-overload]
    return torch.cat([p.detach().double().flatten() for p in parts if isinstance(p, torch.Tensor)])


def _output(model: nn.Module, size: int) -> torch.Tensor | str:
    """``model`` on the seeded ``(BATCH, 3, size, size)`` input, or why it cannot run on it."""
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return _flat_output(model(x))
    except Exception as error:  # noqa: BLE001 - a model that cannot run is reported, not fatal
        return f"does not run on a {BATCH}x3x{size}x{size} input ({type(error).__name__})"


def outputs_on_one_input(specs: Sequence[str], weights: Sequence[Mapping[str, torch.Tensor]],
                         build: Callable[[str], nn.Module] = real_model) -> list[torch.Tensor | str]:
    """Each candidate's output on the same input (module docstring), or why it could not run.

    The input side is :data:`SMALL_SIZE` when the first candidate runs on it, else that
    candidate's declared size. One model is held at a time, run on one thread (a 2-image forward
    is small: measured 0.03 s for a resnet50 on one thread, 1-3 s on two beside another busy
    process). The caller's random generators and thread count are left as they were.
    """
    outputs: list[torch.Tensor | str] = []
    size = SMALL_SIZE
    with torch.random.fork_rng(devices=[]), single_threaded():
        for i, (spec, tensors) in enumerate(zip(specs, weights, strict=True)):
            try:
                model = build(spec)
                model.load_state_dict(dict(tensors), strict=False)
            except Exception as error:  # noqa: BLE001 - reported as a candidate that cannot run
                outputs.append(f"cannot be built and loaded ({type(error).__name__})")
                continue
            model.eval()
            output = _output(model, size)
            if i == 0 and isinstance(output, str):
                size = _declared_size(model)
                output = _output(model, size)
            outputs.append(output)
            del model
    return outputs


def same_output(a: torch.Tensor | str, b: torch.Tensor | str, rtol: float = RTOL) -> bool:
    """True when ``a`` and ``b`` are one output to float rounding (module docstring); never for a failed run.

    >>> a = torch.tensor([1.0, -2.0, 4.0])
    >>> same_output(a, a + 1e-6), same_output(a, a * 1.01), same_output(a, a[:2]), same_output(a, "failed")
    (True, False, False, False)
    """
    if isinstance(a, str) or isinstance(b, str) or a.shape != b.shape:
        return False
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(finite_a, finite_b):
        return False
    odd_a, odd_b = a[~finite_a], b[~finite_b]  # NaN where both are NaN, the same infinity otherwise
    if not bool(((odd_a == odd_b) | (odd_a.isnan() & odd_b.isnan())).all()):
        return False
    a, b = a[finite_a], b[finite_b]
    if a.numel() == 0:
        return True
    scale = torch.maximum(a.abs().max(), b.abs().max())
    return bool((a - b).abs().max() <= rtol * scale)


def group_by_output(outputs: Sequence[torch.Tensor | str], rtol: float = RTOL) -> list[list[int]]:
    """Indices of ``outputs`` grouped by :func:`same_output` with each group's first member, in order.

    A failed run (a string) is a group of its own.

    >>> x = torch.ones(3)
    >>> group_by_output([x, 2 * x, x + 1e-7, "failed"])
    [[0, 2], [1], [3]]
    """
    groups: list[list[int]] = []
    for i, output in enumerate(outputs):
        group = next((g for g in groups if same_output(outputs[g[0]], output, rtol)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups
