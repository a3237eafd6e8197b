"""Checkpoints + images -> spectra: what ``spectrum``, ``compare``, ``check`` and ``layers`` run.

:func:`probe_checkpoints` loads each checkpoint (:mod:`collapse_probe.models.loading`), opens the
images once (:mod:`collapse_probe.data.images`) and streams them through every model in one pass
of :func:`collapse_probe.spectrum`, which solves all spectra in one batched call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapse_probe._utils.devices import parse_device
from collapse_probe.data.images import default_resize, eval_transform, open_images
from collapse_probe.data.text import is_text_data, model_max_length, open_texts
from collapse_probe.errors import CollapseProbeError
from collapse_probe.models.hf import (
    PROCESSOR_CONFIG,
    PROCESSOR_NOTE,
    ProcessorTransform,
    describe_processor,
    processor_pixel_stats,
    processor_size,
)
from collapse_probe.models.loading import LoadedEncoder, LoadReport, load_encoder_with_report
from collapse_probe.pipeline.outputs import OUTPUT_NAME, ProbeResult, is_spectrum_file, load_spectra
from collapse_probe.probe.stream import spectrum
from collapse_probe.results.spectrum import Spectrum

DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class DataConfig:
    """How images become batches (see :func:`collapse_probe.data.images.open_images`)."""

    data: str
    image_size: int | None = None  # None: the checkpoint's training crop size, else 224
    resize: int | None = None
    batch_size: int = 64
    workers: int = 0
    max_samples: int | None = None
    strict: bool = False


@dataclass(frozen=True)
class ProbeConfig:
    """Everything ``collapse-probe spectrum`` needs besides the checkpoint path."""

    data: DataConfig
    arch: str | None = None
    layers: tuple[str, ...] = ()
    device: str = "auto"
    precision: str | None = None
    normalize: bool = False
    trust_checkpoint: bool = False
    allow_partial: bool = False
    repeated_calls: str = "error"  # or "first" / "last": see spectrum(repeated_calls=...)
    skip_nonfinite: bool = False  # drop (and count) NaN/Inf rows instead of refusing the model
    groups: int | None = None  # K groups for jackknife standard errors: see spectrum(groups=...)
    progress: bool = True


class ModelBundle(nn.Module):
    """Several encoders behind one forward, so one pass over the data probes them all.

    Model ``i`` is ``models.m{i}``; ``outputs.m{i}`` (an Identity) sees its output, so the model
    output of even a TorchScript archive can be probed by name.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict({f"m{i}": m for i, m in enumerate(models)})
        self.outputs = nn.ModuleDict({f"m{i}": nn.Identity() for i in range(len(models))})

    def forward(self, x: torch.Tensor) -> None:
        for key, model in self.models.items():
            self.outputs[key](model(x))


def _layer_plan(loaded_layers: Mapping[str, str], requested: Sequence[str]) -> dict[str, str]:
    if requested:
        return {name: loaded_layers.get(name, "") for name in requested}
    return dict(loaded_layers)


def required_image_size(model: nn.Module) -> int | None:
    """The one input size a model accepts, when it has one: torchvision's ``VisionTransformer``
    (``image_size``) or a timm patch embedding with a fixed ``img_size``; else None.

    >>> import torchvision
    >>> required_image_size(torchvision.models.VisionTransformer(32, 16, 1, 2, 8, 8)), required_image_size(nn.Linear(2, 2))
    (32, None)
    """
    for module in model.modules():
        size = getattr(module, "image_size", None)
        if isinstance(size, int) and hasattr(module, "patch_size"):  # torchvision ViT asserts H == W == image_size
            return size
        size = getattr(module, "img_size", None)
        if getattr(module, "strict_img_size", False) and isinstance(size, (tuple, list)) and len(set(size)) == 1:
            return int(size[0])
    return None


def check_image_size(model: nn.Module, image_size: int, what: str = "this model") -> None:
    """Refuse, in one line naming the option to use, an image size the model cannot take."""
    needed = required_image_size(model)
    if needed is not None and needed != image_size:
        raise CollapseProbeError(f"{what} needs {needed} px images (--image-size {needed}), got {image_size} px")


def per_checkpoint_archs(archs: str | Sequence[str] | None, n_checkpoints: int) -> list[str | None]:
    """``--arch`` for each checkpoint: none, one for all, or one per checkpoint in order.

    >>> per_checkpoint_archs(["resnet18"], 2), per_checkpoint_archs(["resnet18", "resnet50"], 2)
    (['resnet18', 'resnet18'], ['resnet18', 'resnet50'])
    """
    if archs is None or isinstance(archs, str):
        return [archs] * n_checkpoints
    archs = list(archs)
    if not archs:
        return [None] * n_checkpoints
    if len(archs) == 1:
        return archs * n_checkpoints
    if len(archs) != n_checkpoints:
        raise CollapseProbeError(f"--arch given {len(archs)} times for {n_checkpoints} checkpoints: give it once "
                                 "(for all of them) or once per checkpoint, in the order of the checkpoints")
    return archs


def probe_checkpoints(paths: Sequence[str | Path], config: ProbeConfig,
                      archs: Sequence[str | None] | None = None) -> list[ProbeResult]:
    """Load each checkpoint, stream the data once through all of them, solve every spectrum.

    Layers: ``config.layers`` if given, else each checkpoint's default layers (representation,
    and embedding when it has a projector), else its output. All layers of all checkpoints are
    captured in the same pass and solved in one batched call (equal dimensions share one
    ``eigvalsh``), through :func:`collapse_probe.spectrum`. ``archs`` gives each checkpoint its
    own architecture (default: ``config.arch`` for all). Hugging Face folders that prepare their
    own inputs (an image processor, a tokenizer) and text data are probed one pass per checkpoint;
    :func:`open_data` says how the data is opened.
    """
    device = parse_device(config.device)
    archs = per_checkpoint_archs(config.arch if archs is None else archs, len(paths))
    loaded = [load_encoder_with_report(p, arch, trust_checkpoint=config.trust_checkpoint,
                                       allow_partial=config.allow_partial) for p, arch in zip(paths, archs, strict=True)]
    if len(loaded) > 1 and (is_text_data(config.data.data)
                            or any(i.image_processor is not None or i.tokenizer is not None for i in loaded)):
        # each model prepares its own inputs (its image processor or tokenizer): one pass each
        return [result for i in range(len(loaded))
                for result in _probe_loaded(list(paths[i:i + 1]), loaded[i:i + 1], config, device)]
    return _probe_loaded(list(paths), loaded, config, device)


def _probe_loaded(paths: list[str | Path], loaded: list[LoadedEncoder], config: ProbeConfig,
                  device: torch.device) -> list[ProbeResult]:
    """One pass of the data through the loaded models (:func:`probe_checkpoints`)."""
    plans = [_layer_plan(item.default_layers, config.layers) for item in loaded]
    if len(loaded) == 1:  # one model: hook it directly, so messages name its own modules
        target: nn.Module = loaded[0].model
        keys = [list(plans[0]) or [OUTPUT_NAME]]
        hooks: list[str] | None = list(plans[0]) or None
    else:
        target = ModelBundle([item.model for item in loaded])
        keys = [[f"models.m{i}.{name}" for name in plan] or [f"outputs.m{i}"] for i, plan in enumerate(plans)]
        hooks = [key for group in keys for key in group]
    loader, data_source = open_data(paths, loaded, config.data, device)
    d = config.data
    solved = spectrum(target, loader, layers=hooks, device=device, normalize=config.normalize,
                      max_samples=d.max_samples, precision=config.precision, progress=config.progress,
                      repeated_calls=config.repeated_calls, skip_nonfinite=config.skip_nonfinite,
                      groups=config.groups)
    if not isinstance(solved, dict):
        solved = {OUTPUT_NAME: solved}
    if "n_unreadable_skipped" in data_source:  # counted during the pass
        data_source["n_unreadable_skipped"] = loader.n_skipped
    results = []
    for path, item, plan, group in zip(paths, loaded, plans, keys, strict=True):
        names = list(plan) or [OUTPUT_NAME]
        spectra = {name: _relabel(solved[key], name) for name, key in zip(names, group, strict=True)}
        roles = {name: role for name, role in plan.items() if role} or {OUTPUT_NAME: "output"}
        report = _note_preprocessing(item.report, data_source)
        source = {"checkpoint": str(path), "loaded_as": report.kind, "arch": report.arch,
                  **data_source, "precision": config.precision or "fp32", "device": str(device),
                  "load": report.to_dict(), "skip_nonfinite": config.skip_nonfinite}
        results.append(ProbeResult(spectra, roles, source, report))
    return results


def _note_preprocessing(report: LoadReport, data_source: Mapping[str, Any]) -> LoadReport:
    """``report`` with its note on the folder's image processor saying what preprocessed the images
    (``--image-size``/``--resize`` replace the processor's resize and crop: :func:`open_data`)."""
    done = data_source.get("preprocessing")
    if not done:
        return report
    return replace(report, notes=tuple(PROCESSOR_NOTE + done if note.startswith(PROCESSOR_NOTE) else note
                                       for note in report.notes))


def open_data(paths: Sequence[str | Path], loaded: Sequence[LoadedEncoder], d: DataConfig,
              device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The batches of ``d.data`` for these models, and what to record of them in ``source``.

    * a ``.txt``/``.jsonl`` file: tokenizer batches by the one model's tokenizer
      (:mod:`collapse_probe.data.text`);
    * images for a Hugging Face folder with an image processor: preprocessed by that processor
      (its resize, crop, rescale and normalisation), unless ``image_size`` or ``resize`` is given,
      which selects the evaluation transform (bilinear resize, centre crop) at that size followed
      by the processor's own rescale and normalisation (:func:`processor_pixel_stats`);
    * images otherwise: :func:`~collapse_probe.data.images.open_images` at ``d.image_size`` (None:
      the checkpoint's training crop size, else 224), refused early when a model needs another size.
    """
    first = loaded[0]
    if is_text_data(d.data):
        if first.tokenizer is None:
            raise CollapseProbeError(f"--data {d.data} is text, but {paths[0]} has no tokenizer: text needs a "
                                     "Hugging Face folder with its tokenizer files (save_pretrained)")
        texts = open_texts(d.data, first.tokenizer, batch_size=d.batch_size, max_samples=d.max_samples,
                           max_length=model_max_length(first.tokenizer, first.model))
        return texts, {"data": str(d.data), "n_texts": texts.n_texts, "n_blank_lines_skipped": texts.n_skipped,
                       "max_length": texts.max_length}
    if len(loaded) == 1 and first.tokenizer is not None and first.image_processor is None:
        raise CollapseProbeError(f"{paths[0]} is a text model (a tokenizer, no image processor): give --data "
                                 "FILE.txt (one text per line) or FILE.jsonl (a 'text' field)")
    processor = first.image_processor if len(loaded) == 1 else None
    transform = None
    if processor is not None and d.image_size is None and d.resize is None:
        images = open_images(d.data, transform=ProcessorTransform(processor), batch_size=d.batch_size,
                             workers=d.workers, max_samples=d.max_samples, strict=d.strict, device=device)
        return images, {"data": str(d.data), "n_images": images.n_images, "n_unreadable_skipped": images.n_skipped,
                        "image_size": processor_size(processor), "resize": None,
                        "preprocessing": f"{PROCESSOR_CONFIG}: {describe_processor(processor)}"}
    if d.image_size is None:
        trained_sizes = {item.image_size for item in loaded if item.image_size}
        d = replace(d, image_size=trained_sizes.pop() if len(trained_sizes) == 1 else DEFAULT_IMAGE_SIZE)
    for path, item in zip(paths, loaded, strict=True):
        check_image_size(item.model, d.image_size, f"{Path(path).name}: this model")
    if processor is not None:
        mean, std = processor_pixel_stats(processor)
        transform = eval_transform(d.image_size, d.resize, mean=mean, std=std)
    images = open_images(d.data, image_size=d.image_size, resize=d.resize, batch_size=d.batch_size,
                         workers=d.workers, max_samples=d.max_samples, strict=d.strict, device=device,
                         transform=transform)
    resize = d.resize or default_resize(d.image_size)
    source = {"data": str(d.data), "n_images": images.n_images, "n_unreadable_skipped": images.n_skipped,
              "image_size": d.image_size, "resize": resize}
    if processor is not None:
        source["preprocessing"] = (f"the evaluation transform (bilinear resize of the shorter side to {resize}, centre "
                                   f"crop {d.image_size}), then the rescale and normalisation of {PROCESSOR_CONFIG} "
                                   f"({type(processor).__name__}'s own resize and crop not used)")
    return images, source


def probe_checkpoint(path: str | Path, config: ProbeConfig) -> ProbeResult:
    """:func:`probe_checkpoints` for one checkpoint."""
    return probe_checkpoints([path], config)[0]


def load_or_probe(source: str | Path, config: ProbeConfig | None) -> ProbeResult:
    """A saved spectrum file (``.json``) as is, or a checkpoint probed with ``config``."""
    if is_spectrum_file(source):
        return load_spectra(source)
    if config is None:
        raise CollapseProbeError(f"{source} is a checkpoint: give --data DIR (or builtin:NAME) to probe it")
    return probe_checkpoint(source, config)


def layer_table(model: nn.Module, *, image_size: int = 224, device: str | None = "cpu") -> list[tuple[str, str, str]]:
    """``(name, module type, output shape)`` of every named module, from one dummy forward.

    The forward uses two random ``(3, image_size, image_size)`` images in eval mode; modules that
    do not run on the forward path get ``"-"`` for their shape.

    >>> rows = layer_table(nn.Sequential(nn.Linear(3 * 4 * 4, 5), nn.ReLU()), image_size=4)
    Traceback (most recent call last):
    ...
    collapse_probe.errors.CollapseProbeError: a dummy forward with input (2, 3, 4, 4) failed: ...
    >>> rows = layer_table(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), image_size=4)
    >>> rows
    [('<output>', 'Sequential', '(2, 5)'), ('0', 'Flatten', '(2, 48)'), ('1', 'Linear', '(2, 5)')]
    """
    from collapse_probe.probe.capture import capture_outputs, eval_mode

    shapes: dict[str, str] = {}

    def describe(output: Any) -> str:
        if isinstance(output, torch.Tensor):
            return str(tuple(output.shape))
        if isinstance(output, (tuple, list)):
            return "(" + ", ".join(describe(o) for o in output) + ")"
        return type(output).__name__

    def record(name: str, output: Any) -> None:  # returns None: a forward hook's return value replaces the output
        shapes.setdefault(name, describe(output))

    check_image_size(model, image_size)
    hookable = not isinstance(model, torch.jit.ScriptModule)  # scripted submodules take no hooks
    modules = {n: m for n, m in model.named_modules() if n} if hookable else {}
    device = parse_device(device)
    x = torch.randn(2, 3, image_size, image_size, device=device)
    try:
        with eval_mode(model), torch.inference_mode(), capture_outputs(modules, record):
            output = model.to(device)(x)
    except CollapseProbeError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure means the input does not fit the model
        raise CollapseProbeError(f"a dummy forward with input {tuple(x.shape)} failed: {type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''} (try --image-size)") from None
    rows = [("<output>", type(model).__name__, describe(output))]
    rows += [(n, type(m).__name__, shapes.get(n, "-")) for n, m in modules.items()]
    return rows


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_sources` returns: spectra and roles keyed ``"SOURCE:LAYER"`` (in the
    order given), and the :class:`ProbeResult` of each probed checkpoint (its load report, the
    images read and skipped), in the order of the checkpoints."""

    spectra: dict[str, Spectrum]
    roles: dict[str, str]
    probed: list[ProbeResult]


def compare_sources(sources: Sequence[str | Path], config: ProbeConfig | None,
                    archs: Sequence[str | None] | None = None) -> Comparison:
    """Spectra of several checkpoints (probed together, :func:`probe_checkpoints`) and saved files.

    SOURCE in the keys is the file name, or the full path where two file names are equal.
    ``archs``: one architecture for all checkpoints, or one per checkpoint in order (spectrum
    files take none).
    """
    checkpoints = [s for s in sources if not is_spectrum_file(s)]
    if checkpoints and config is None:
        raise CollapseProbeError("checkpoints need --data DIR (or builtin:NAME) to be probed")
    results = probe_checkpoints(checkpoints, config, archs) if checkpoints else []
    probed = iter(results)
    names = [Path(s).name for s in sources]
    spectra: dict[str, Spectrum] = {}
    roles: dict[str, str] = {}
    for source, name in zip(sources, names, strict=True):
        result = load_spectra(source) if is_spectrum_file(source) else next(probed)
        label = str(source) if names.count(name) > 1 else name
        for layer, s in result.spectra.items():
            spectra[f"{label}:{layer}"] = s
            roles[f"{label}:{layer}"] = result.roles.get(layer, "")
    return Comparison(spectra, roles, results)


def _relabel(s: Spectrum, layer: str) -> Spectrum:
    return dataclasses.replace(s, layer=layer)
