"""``ProbeOptions``: what a probe measures, defined once for every entry point.

``spectrum()``, ``lidar()``, :class:`~collapse_probe.integrations.monitor.SpectrumMonitor`, the
Lightning and Hugging Face callbacks and every CLI command that probes take the same options, as
one :class:`ProbeOptions` or as plain keyword arguments of the same names
(``spectrum(model, loader, pool="cls", center=False)`` is
``spectrum(model, loader, ProbeOptions(pool="cls", center=False))``). Each option means the
same thing everywhere; this docstring and :class:`ProbeOptions`'s are the one place that says
what.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from collapse_probe._utils.ranks import rank, world_size
from collapse_probe.errors import CollapseProbeError
from collapse_probe.metrics.classes import DEFAULT_CLASS_BUDGET
from collapse_probe.probe.capture import POOLS
from collapse_probe.probe.tokens import TOKEN_ROWS

PRECISIONS: dict[str | None, torch.dtype | None] = {
    None: None, "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
REPEATED_CALLS = ("error", "first", "last", "each")
Layers = str | Sequence[str] | Mapping[str, str] | None


@dataclass(frozen=True)
class ProbeOptions:
    """What one probe measures. Every field has the same meaning in every entry point.

    Attributes:
        layers: ``None``: the model output (one result); a module name as
            ``model.named_modules()`` names it (one result); a list of names
            (``dict[name, result]``, in that order); or a mapping display name -> module name
            (``dict[display name, result]``).
        pool: how a layer's output becomes one row per input. (B, C, H, W) maps: ``"avg"``
            (default), ``"max"`` or ``"flatten"``; (B, T, D) tokens: ``"avg"`` / ``"max"`` over T
            (over real tokens only when the batch carries an ``attention_mask``) or ``"cls"``
            (token 0).
        input_fn: ``batch -> model input`` (called as ``model(input_fn(batch))``), overriding the
            default (a tensor, element 0 of a tuple, a dict's ``input``/``image``/``pixel_values``
            entry, or ``model(**batch)`` for a dict whose keys name ``forward``'s parameters).
        output_fn: ``output -> tensor to probe``, applied to the model output or each hooked
            layer's output (default: a dict or ``ModelOutput`` gives ``last_hidden_state``, a
            Hugging Face module's tuple its element 0).
        center: subtract the mean (the paper's covariance); ``False``: the raw second moment.
        normalize: L2-normalise each row first (the paper's public script does).
        precision: ``None``/``"fp32"``, or ``"bf16"``/``"fp16"``: the forward runs under
            autocast; the statistics are float64 whatever it is.
        max_samples: at most this many rows in total: the first ``max_samples`` rows the loader
            yields (under ``torch.distributed`` each process takes its share, so the total is
            the same as in one process). The CLI feeds a seeded random subset of the data, so
            there it is a seeded random subset of this size. At least 2.
        skip_nonfinite: drop (and count) rows holding NaN/Inf instead of refusing the model.
        groups: K >= 2 for jackknife error bars: batch i goes to group ``i mod K``; ``None``: none.
        repeated_calls: a layer that runs several times per forward (siamese views, weight
            tying): ``"error"`` (default) refuses; ``"first"`` / ``"last"`` probe that call;
            ``"each"`` probes every call as ``"name#0"``, ``"name#1"``, ...
        device: where the forward and the statistics run; ``None``: where the model is. The
            model is moved back afterwards. Under torchrun a bare ``"cuda"`` is this process's
            GPU (``cuda:LOCAL_RANK``).
        progress: a progress bar on stderr (rank 0 only).
        tokens: what a row is for (B, T, D) token outputs and (B, C, H, W) maps. ``None``
            (default): one row per input, by ``pool``. ``"all"``: every token (every spatial
            position of a map) is a row, padding excluded by the attention mask; ``"patch"``: patch
            tokens only; ``"prefix"``: prefix tokens only (CLS + registers). ``n_samples`` then
            counts tokens, and the result's ``extra["token_norms"]`` says how their norms spread.
        prefix_tokens: how many prefix tokens the outputs start with; ``None``: what the model
            says (timm's ``num_prefix_tokens``, torchvision's class token, a Hugging Face model's
            CLS / register / distillation tokens); a model that says nothing is refused for
            ``"patch"`` / ``"prefix"``.
        per_class: also one spectrum per class label of the batches ((x, y) tuples, a dict's
            ``label`` / ``labels``), beside the pooled one, in the same pass: the result is then a
            :class:`~collapse_probe.results.classes.ClassSpectra` per layer. K d^2 floats: refused up
            front over ``class_memory_budget``.
        class_scatter: within- and between-class covariance spectra and NC1 (Papyan et al. 2020)
            in O(d^2 + K d) memory, for any number of classes (``ClassSpectra.scatter``).
        classes: with ``per_class``, the labels to keep a spectrum for (default: all).
        class_memory_budget: bytes the per-class state may take (default 4 GiB).

    >>> ProbeOptions(pool="cls", center=False).replace(max_samples=100).max_samples
    100
    >>> ProbeOptions(pool="mean")
    Traceback (most recent call last):
    ...
    collapse_probe.errors.CollapseProbeError: unknown pool 'mean'; use one of avg, max, flatten, cls
    """

    layers: Layers = None
    pool: str = "avg"
    input_fn: Callable[[Any], Any] | None = None
    output_fn: Callable[[Any], Any] | None = None
    center: bool = True
    normalize: bool = False
    precision: str | None = None
    max_samples: int | None = None
    skip_nonfinite: bool = False
    groups: int | None = None
    repeated_calls: str = "error"
    device: torch.device | str | None = None
    progress: bool = True
    tokens: str | None = None
    prefix_tokens: int | None = None
    per_class: bool = False
    class_scatter: bool = False
    classes: tuple[int, ...] | None = None
    class_memory_budget: int = DEFAULT_CLASS_BUDGET

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise CollapseProbeError(f"unknown pool {self.pool!r}; use one of {', '.join(POOLS)}")
        if self.precision not in PRECISIONS:
            raise CollapseProbeError(f"unknown precision {self.precision!r}; use fp32, bf16 or fp16")
        if self.repeated_calls not in REPEATED_CALLS:
            raise CollapseProbeError(
                f"unknown repeated_calls {self.repeated_calls!r}; use one of {', '.join(REPEATED_CALLS)}")
        if self.groups is not None and int(self.groups) < 2:
            raise CollapseProbeError(f"groups must be at least 2 for a jackknife standard error, got {self.groups}")
        if self.max_samples is not None and int(self.max_samples) < 2:
            raise CollapseProbeError(f"max_samples must be at least 2, got {self.max_samples}")
        if self.layers is not None and not isinstance(self.layers, str) and len(self.layers) == 0:
            raise CollapseProbeError(
                "layers is empty: name at least one module, or pass layers=None for the model output")
        if self.tokens not in TOKEN_ROWS:
            raise CollapseProbeError(f"unknown tokens {self.tokens!r}; use all, patch or prefix (or None: one row "
                                     "per input)")
        if self.prefix_tokens is not None and int(self.prefix_tokens) < 0:
            raise CollapseProbeError(f"prefix_tokens must be >= 0, got {self.prefix_tokens}")
        if self.labelled and (self.groups is not None or self.repeated_calls == "each"):
            raise CollapseProbeError("per_class / class_scatter cannot be combined with groups or "
                                     "repeated_calls='each'")
        names = self.module_names()
        if len(set(names)) != len(names):
            raise CollapseProbeError(f"layers contains duplicates: {names}")

    def replace(self, **changes: Any) -> ProbeOptions:
        """A copy with ``changes`` (unknown names refused in one line)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, options: ProbeOptions | None = None, **kwargs: Any) -> ProbeOptions:
        """``options`` with ``kwargs`` applied on top (either may be absent).

        >>> ProbeOptions.build(ProbeOptions(pool="max"), normalize=True)
        ProbeOptions(layers=None, pool='max', ..., normalize=True, ...)
        >>> ProbeOptions.build(nomalize=True)
        Traceback (most recent call last):
        ...
        collapse_probe.errors.CollapseProbeError: unknown probe option 'nomalize'; did you mean normalize? ...
        """
        if options is not None and not isinstance(options, ProbeOptions):
            raise CollapseProbeError(f"options must be a ProbeOptions, got {type(options).__name__}")
        _check_names(kwargs)
        return dataclasses.replace(options or cls(), **kwargs)

    # -- what the layers option says ---------------------------------------------------------
    def module_names(self) -> list[str]:
        """The modules to hook, in order (empty: the model output)."""
        if self.layers is None:
            return []
        if isinstance(self.layers, str):
            return [self.layers]
        if isinstance(self.layers, Mapping):
            return list(self.layers.values())
        return list(self.layers)

    def display_names(self) -> dict[str, str] | None:
        """display name -> module name for a mapping ``layers``; else None."""
        return dict(self.layers) if isinstance(self.layers, Mapping) else None

    @property
    def single(self) -> bool:
        """Whether the result is one object rather than a dict (``layers`` None or one name)."""
        return self.layers is None or isinstance(self.layers, str)

    @property
    def labelled(self) -> bool:
        """Whether the probe reads class labels (``per_class`` or ``class_scatter``)."""
        return self.per_class or self.class_scatter

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def rows_for_this_process(self) -> float:
        """This process's share of ``max_samples`` (inf without a cap): ranks below
        ``max_samples mod W`` take one more row, so the shares add up to ``max_samples``.

        >>> ProbeOptions(max_samples=10).rows_for_this_process()
        10
        """
        if self.max_samples is None:
            return float("inf")
        share, extra = divmod(int(self.max_samples), world_size())
        return share + (1 if rank() < extra else 0)

    def conventions(self) -> dict[str, Any]:
        """The options that change the numbers, as recorded beside a result."""
        return {"pool": self.pool, "center": self.center, "normalize": self.normalize,
                "precision": self.precision or "fp32", "max_samples": self.max_samples,
                "skip_nonfinite": self.skip_nonfinite, "groups": self.groups,
                "repeated_calls": self.repeated_calls, "tokens": self.tokens, "prefix_tokens": self.prefix_tokens,
                "per_class": self.per_class, "class_scatter": self.class_scatter}


FIELDS = tuple(field.name for field in dataclasses.fields(ProbeOptions))


def _check_names(kwargs: Mapping[str, Any]) -> None:
    import difflib

    for name in kwargs:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise CollapseProbeError(f"unknown probe option {name!r}; {hint}the options are {', '.join(FIELDS)}")
