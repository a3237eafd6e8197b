"""Checkpoints + images -> spectra: what ``spectrum``, ``compare``, ``check`` and ``layers`` run.

:func:`probe_checkpoints` loads each checkpoint (:mod:`collapse_probe.models.loading`), opens the
images once (:mod:`collapse_probe.data.images`) and streams them through every model in one pass
of :func:`collapse_probe.spectrum`, which solves all spectra in one batched call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapse_probe._utils.devices import parse_device
from collapse_probe.data.text import is_text_data
from collapse_probe.embeddings.pairing import refuse_unpaired_embedding_sets
from collapse_probe.errors import CollapseProbeError
from collapse_probe.models.loading import LoadedEncoder, load_encoder_with_report
from collapse_probe.pipeline.data import (
    DEFAULT_IMAGE_SIZE,
    DataConfig,
    _note_preprocessing,
    check_image_size,
    open_data,
)
from collapse_probe.pipeline.outputs import OUTPUT_NAME, ProbeResult, is_spectrum_file, load_spectra
from collapse_probe.probe.options import ProbeOptions
from collapse_probe.probe.stream import spectrum
from collapse_probe.results.classes import ClassSpectra
from collapse_probe.results.spectrum import Spectrum


@dataclass(frozen=True)
class ProbeConfig:
    """Everything ``spectrum``, ``compare``, ``check``, ``lidar`` and ``eval`` need besides the
    checkpoint paths: where the data is, how a file becomes a model, and the one
    :class:`~collapse_probe.probe.options.ProbeOptions` of what is measured (``options.layers``
    names layers by the checkpoint's roles or module names; empty: the checkpoint's defaults)."""

    data: DataConfig
    options: ProbeOptions = field(default_factory=ProbeOptions)
    arch: str | None = None
    trust_checkpoint: bool = False
    allow_partial: bool = False

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.options.module_names())


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


def layer_plan(loaded_layers: Mapping[str, str], requested: Sequence[str]) -> dict[str, str]:
    if requested:
        return {name: loaded_layers.get(name, "") for name in requested}
    return dict(loaded_layers)


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
    device = parse_device(config.options.device or "auto")
    archs = per_checkpoint_archs(config.arch if archs is None else archs, len(paths))
    loaded = [load_encoder_with_report(p, arch, trust_checkpoint=config.trust_checkpoint,
                                       allow_partial=config.allow_partial) for p, arch in zip(paths, archs, strict=True)]
    if len(loaded) > 1 and (is_text_data(config.data.data)
                            or any(i.image_processor is not None or i.tokenizer is not None for i in loaded)):
        # each model prepares its own inputs (its image processor or tokenizer): one pass each
        return [result for i in range(len(loaded))
                for result in _probe_loaded(list(paths[i:i + 1]), loaded[i:i + 1], config, device)]
    sizes = [item.image_size or DEFAULT_IMAGE_SIZE for item in loaded]
    if config.data.image_size is None and len(set(sizes)) > 1:
        # each checkpoint at the size it was trained at (recorded in its source): one pass per size
        results: dict[int, ProbeResult] = {}
        for size in dict.fromkeys(sizes):
            group = [i for i, s in enumerate(sizes) if s == size]
            sized = replace(config, data=replace(config.data, image_size=size))
            for i, result in zip(group, _probe_loaded([paths[i] for i in group], [loaded[i] for i in group], sized,
                                                      device), strict=True):
                results[i] = result
        return [results[i] for i in range(len(loaded))]
    return _probe_loaded(list(paths), loaded, config, device)


def _probe_loaded(paths: list[str | Path], loaded: list[LoadedEncoder], config: ProbeConfig,
                  device: torch.device) -> list[ProbeResult]:
    """One pass of the data through the loaded models (:func:`probe_checkpoints`)."""
    plans = [layer_plan(item.default_layers, config.layers) for item in loaded]
    if len(loaded) == 1:  # one model: hook it directly, so messages name its own modules
        target: nn.Module = loaded[0].model
        keys = [list(plans[0]) or [OUTPUT_NAME]]
        hooks: list[str] | None = list(plans[0]) or None
    else:
        target = ModelBundle([item.model for item in loaded])
        keys = [[f"models.m{i}.{name}" for name in plan] or [f"outputs.m{i}"] for i, plan in enumerate(plans)]
        hooks = [key for group in keys for key in group]
    loader, data_source = open_data(paths, loaded, config.data, device)
    # the data subset is the sample (--max-samples images or texts): no row cap on top (tokens are rows)
    options = config.options.replace(layers=hooks, device=device, max_samples=None)
    solved = spectrum(target, loader, options)
    if not isinstance(solved, dict):
        solved = {OUTPUT_NAME: solved}
    if "n_unreadable_skipped" in data_source:  # counted during the pass
        data_source["n_unreadable_skipped"] = loader.n_skipped
    results = []
    for path, item, plan, group in zip(paths, loaded, plans, keys, strict=True):
        names = list(plan) or [OUTPUT_NAME]
        found = {name: solved[key] for name, key in zip(names, group, strict=True)}
        classes = {name: r for name, r in found.items() if isinstance(r, ClassSpectra)}
        spectra = {name: _relabel(r.pooled if isinstance(r, ClassSpectra) else r, name) for name, r in found.items()}
        roles = {name: role for name, role in plan.items() if role} or {OUTPUT_NAME: "output"}
        report = _note_preprocessing(item.report, data_source)
        source = {"checkpoint": str(path), "loaded_as": report.kind, "arch": report.arch,
                  **data_source, **config.options.conventions(), "device": str(device),
                  "load": report.to_dict()}
        results.append(ProbeResult(spectra, roles, source, report, classes))
    return results


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
    files = {str(s): load_spectra(s) for s in sources if is_spectrum_file(s)}
    refuse_unpaired_embedding_sets(files)  # embedding sets: the same rows (and ids), before any probing
    results = probe_checkpoints(checkpoints, config, archs) if checkpoints else []
    probed = iter(results)
    names = [Path(s).name for s in sources]
    spectra: dict[str, Spectrum] = {}
    roles: dict[str, str] = {}
    for source, name in zip(sources, names, strict=True):
        result = files[str(source)] if is_spectrum_file(source) else next(probed)
        label = str(source) if names.count(name) > 1 else name
        for layer, s in result.spectra.items():
            spectra[f"{label}:{layer}"] = s
            roles[f"{label}:{layer}"] = result.roles.get(layer, "")
    return Comparison(spectra, roles, results)


def _relabel(s: Spectrum, layer: str) -> Spectrum:
    return dataclasses.replace(s, layer=layer)
