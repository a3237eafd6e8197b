"""Options shared by several commands, each defined once (the pip-tools ``scripts/options.py`` way).

A command stacks the decorators it needs; :func:`probe_config` turns the parsed values into the
library's :class:`~collapse_probe.pipeline.outputs.ProbeConfig`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from collapse_probe.errors import CollapseProbeError

if TYPE_CHECKING:  # collapse_probe.pipeline.checkpoints imports torch: only when a command runs, never for --help
    from collapse_probe.pipeline.checkpoints import ProbeConfig

F = Callable[..., Any]


def _stack(*decorators: F) -> F:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def ensure_writable_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Create ``path`` (and its parents) and check a file can be written there, before any work.

    Raises :class:`CollapseProbeError` naming the option, so a bad ``--out`` fails in one line
    (exit 2) before a checkpoint is loaded or an image decoded.
    """
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise CollapseProbeError(f"{option} {os.fspath(path)}: a file of that name exists; give a folder") from None
    except OSError as error:
        raise CollapseProbeError(f"{option} {os.fspath(path)}: cannot create the folder ({error.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CollapseProbeError(f"{option} {os.fspath(path)}: cannot write there ({error.strerror})") from None


def check_out_folder(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``--out`` is created and checked while the options are parsed."""
    if value is not None and not ctx.resilient_parsing:
        ensure_writable_folder(value, param.opts[0])
    return value


def check_out_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: the folder of an output FILE is created and checked while the options are
    parsed, and a file already there must be writable (it will be replaced)."""
    if value is not None and not ctx.resilient_parsing:
        ensure_writable_folder(os.path.dirname(os.path.abspath(value)), param.opts[0])
        if os.path.exists(value) and not os.access(value, os.W_OK):
            raise CollapseProbeError(f"{param.opts[0]} {value}: cannot write that file (permission denied)")
    return value


def _importable_from_cwd(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``--arch module:callable`` finds ``module.py`` in the current folder, as ``python -m`` would."""
    names = value if isinstance(value, tuple) else (value,)
    if any(name and ":" in name for name in names) and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return value


ARCH_HELP = ("Architecture for a bare state_dict: a torchvision name (resnet50, vit_b_16, ...), a timm name "
             "(torchvision/NAME or timm/NAME where both have it), or module:callable (module.py may sit in the "
             "current folder). Without it, the one torchvision/timm model whose keys and shapes the file fits is "
             "detected. Not needed for collapse-probe trainer checkpoints, TorchScript or torch.export files.")
arch = click.option("--arch", metavar="NAME", callback=_importable_from_cwd, help=ARCH_HELP)
#: ``compare``: once for every checkpoint, or once per checkpoint in order.
arch_per_checkpoint = click.option("--arch", multiple=True, metavar="NAME", callback=_importable_from_cwd,
                                   help=ARCH_HELP + " Give it once for all checkpoints, or once per checkpoint, "
                                        "in their order.")
trust_checkpoint = click.option("--trust-checkpoint", is_flag=True,
                                help="Allow full unpickling, and the custom code a Hugging Face folder's config "
                                     "names (auto_map): both can run arbitrary code, only for files you trust.")
allow_partial = click.option("--allow-partial", is_flag=True,
                             help="Probe even when the checkpoint does not fit --arch (shape-mismatched or "
                                  "missing tensors, unexpected backbone keys): those parts stay random, and a "
                                  "warning and the load report say which.")
data = click.option("--data", metavar="DIR|builtin:NAME|FILE.txt|FILE.jsonl",
                    help="Image folder (searched recursively; class sub-folders fine) or builtin:digits / builtin:fashion-mnist; for "
                         "a Hugging Face folder with a tokenizer, a .txt file (one text per line) or a .jsonl "
                         "file (a 'text' field per line).")
layer = click.option("--layer", "layers", multiple=True, metavar="NAME",
                     help="Module to probe, as `collapse-probe layers` lists it; repeat for several. "
                          "Default: the representation and, with a projector, the projector output.")
batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
workers = click.option("--workers", type=click.IntRange(min=0), default=lambda: min(4, os.cpu_count() or 1),
                       show_default="min(4, CPU cores)", help="DataLoader worker processes decoding images.")
device = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:i]")
precision = click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
                         show_default=True, help="Forward precision (statistics are always float64).")
image_size = click.option("--image-size", type=click.IntRange(min=1), default=None,
                          help="Centre-crop size [default: 224, or the training crop size a collapse-probe trainer checkpoint records]. "
                               "For a Hugging Face folder with an image processor it replaces the processor's resize "
                               "and crop (its rescale and normalisation stay).")
resize = click.option("--resize", type=click.IntRange(min=1), default=None,
                      help="Shorter side before the crop [default: image-size * 256/224, i.e. 256].")
max_samples = click.option("--max-samples", type=click.IntRange(min=2), default=None,
                           help="Probe a seeded random subset of this many images (or texts): the same "
                                "subset every run, for folders and builtin: data alike.")
pool = click.option(
    "--pool", type=click.Choice(["avg", "max", "flatten", "cls"]), default="avg", show_default=True,
    help="How a layer's output becomes one row per input: (B, C, H, W) maps by avg / max over H, W or "
         "flatten; (B, T, D) tokens by avg / max over T (real tokens only, with a tokenizer's "
         "attention mask) or cls (token 0). (B, C, L) outputs of 1-d convolutions pool L.")
tokens = click.option(
    "--tokens", type=click.Choice(["all", "patch", "prefix"]), default=None,
    help="One row per token instead of one per image/text: every token (padding excluded; every spatial "
         "position of a CNN map), patch tokens only, or prefix tokens only (CLS + registers). The table then "
         "says how the token norms spread (artifact tokens). E.g. --layer encoder --tokens patch on a ViT.")
prefix_tokens = click.option(
    "--prefix-tokens", type=click.IntRange(min=0), default=None, metavar="N",
    help="Prefix tokens (CLS + registers) the token outputs start with [default: what the model says: timm's "
         "num_prefix_tokens, torchvision's class token, a Hugging Face model's CLS/register tokens].")
per_class = click.option(
    "--per-class", is_flag=True,
    help="Also one spectrum per class (an image folder's class sub-folders, a built-in set's labels) beside "
         "the pooled one, the worst class named; K d^2 memory, refused over --class-memory-budget.")
class_scatter = click.option(
    "--class-scatter", is_flag=True,
    help="Within- and between-class spectra and NC1 (Papyan et al. 2020), O(d^2 + K d) memory: any number of classes.")
class_memory_budget = click.option(
    "--class-memory-budget", type=click.FloatRange(min=0.001), default=4.0, show_default=True, metavar="GiB",
    help="Memory the per-class spectra may take (16 d^2 bytes per class).")
center = click.option("--center/--no-center", default=True, show_default=True,
                      help="Subtract the mean (the paper's covariance); --no-center: the raw second moment.")
normalize = click.option("--normalize/--no-normalize", default=False, show_default=True,
                         help="L2-normalise each embedding before the covariance (the paper's public script does).")
repeated_calls = click.option(
    "--repeated-calls", type=click.Choice(["error", "first", "last"]), default="error", show_default=True,
    help="A probed layer that runs more than once per forward (siamese views, weight tying) would count "
         "several rows per image: refuse it (error), or probe only its first or last call.")
strict = click.option("--strict", is_flag=True,
                      help="Fail (exit 2) on an unreadable image instead of skipping and counting it.")
skip_nonfinite = click.option("--skip-nonfinite", is_flag=True,
                              help="Drop (and count) embeddings holding NaN/Inf instead of refusing the model.")
groups = click.option(
    "--groups", type=click.IntRange(min=2), default=None, metavar="K",
    help="Error bars: batch i goes to group i mod K, and every metric gets a jackknife standard error "
         "(shown as value +- se; needed by check --max-drop-sigma). Costs K + 1 eigen-solves per layer.")
out = click.option("--out", type=click.Path(file_okay=False), default="collapse_probe_out", show_default=True,
                   metavar="DIR", callback=check_out_folder,
                   help="Folder for the JSON, CSV and PNG outputs (created and checked before any work).")
as_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of a table.")
quiet = click.option("--quiet", "-q", is_flag=True,
                     help="Nothing on stderr but errors: no progress, report or warnings. One warning stays: "
                          "a checkpoint loaded with --allow-partial is partly random, and says so even when quiet.")

#: What a probe measures (ProbeOptions), the same flags on every command that probes.
measure_options = _stack(layer, pool, tokens, prefix_tokens, center, normalize, precision, max_samples,
                         skip_nonfinite, groups, repeated_calls, per_class, class_scatter, class_memory_budget, device)
#: How the data is read (DataConfig) and a checkpoint loaded.
_read_options = _stack(batch_size, workers, image_size, resize, strict, trust_checkpoint, allow_partial)
_probe_rest = _stack(measure_options, _read_options)
#: Everything needed to turn checkpoints and images into spectra.
probe_options = _stack(data, arch, _probe_rest)
#: The same with ``--arch`` once per checkpoint (``compare``).
probe_options_per_checkpoint = _stack(data, arch_per_checkpoint, _probe_rest)


def probe_config(values: dict[str, Any], *, quiet_run: bool = False) -> ProbeConfig:
    """Build the :class:`ProbeConfig` (its one ``ProbeOptions``) from the parsed ``probe_options`` values."""
    from collapse_probe.pipeline.checkpoints import DataConfig, ProbeConfig
    from collapse_probe.probe.options import ProbeOptions

    if not values.get("data"):
        raise CollapseProbeError("--data DIR (or builtin:NAME) is needed to probe a checkpoint")
    data_config = DataConfig(
        data=values["data"], image_size=values.get("image_size"), resize=values.get("resize"),
        batch_size=values["batch_size"], workers=values["workers"], max_samples=values["max_samples"],
        strict=values["strict"], labels=bool(values.get("per_class") or values.get("class_scatter")),
    )
    measured = ProbeOptions(
        layers=tuple(values["layers"]) or None, pool=values["pool"], center=values["center"],
        normalize=values["normalize"], precision=None if values["precision"] == "fp32" else values["precision"],
        max_samples=values["max_samples"], skip_nonfinite=values["skip_nonfinite"], groups=values["groups"],
        repeated_calls=values["repeated_calls"], device=values["device"], progress=not quiet_run,
        tokens=values["tokens"], prefix_tokens=values["prefix_tokens"], per_class=values["per_class"],
        class_scatter=values["class_scatter"], class_memory_budget=int(values["class_memory_budget"] * 2**30),
    )
    return ProbeConfig(data=data_config, options=measured, arch=values["arch"],
                       trust_checkpoint=values["trust_checkpoint"], allow_partial=values["allow_partial"])


PROBE_KEYS = ("data", "arch", "layers", "batch_size", "workers", "device", "precision", "image_size", "resize",
              "max_samples", "pool", "center", "normalize", "repeated_calls", "strict", "skip_nonfinite", "groups",
              "trust_checkpoint", "allow_partial", "tokens", "prefix_tokens", "per_class", "class_scatter",
              "class_memory_budget")


def split_probe_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the ``probe_options`` values from a command's own ones."""
    probe = {k: values.pop(k) for k in PROBE_KEYS if k in values}
    return probe, values
