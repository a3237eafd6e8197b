"""Probe checkpoints on image data and read/write spectrum reports: what the CLI commands call.

Files written by :func:`write_outputs` (``collapse-probe spectrum --out DIR``):

* ``spectrum.json``: format ``collapse-probe/spectra-v1``: ``{"layers": {name: Spectrum.to_dict()},
  "roles": {name: role}, "source": {...}}``; :func:`load_spectra` reads it back, and also a single
  :meth:`Spectrum.save` file;
* ``spectrum.csv``: :func:`collapse_probe.to_frame`, one row per layer;
* ``spectrum.png``: :func:`collapse_probe.plot_spectra`, every layer on one plot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from collapse_probe.checkpoints import LoadReport, load_encoder_with_report
from collapse_probe.data.images import describe_error, open_images
from collapse_probe.errors import CollapseProbeError
from collapse_probe.plot import plot_spectra
from collapse_probe.probe import spectrum
from collapse_probe.result import FORMAT as SPECTRUM_FORMAT
from collapse_probe.result import Spectrum, to_frame

SPECTRA_FORMAT = "collapse-probe/spectra-v1"
OUTPUT_NAME = "output"
#: The columns of the printed table: (metrics key, header).
TABLE_COLUMNS = (("dim", "dim"), ("n_samples", "N"), ("effective_rank", "eff.rank"), ("rankme", "RankMe"),
                 ("collapsed_dims", "collapsed"), ("stable_rank", "stable rank"), ("alpha", "alpha"))


@dataclass(frozen=True)
class DataConfig:
    """How images become batches (see :func:`collapse_probe.data.images.open_images`)."""

    data: str
    image_size: int = 224
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
    progress: bool = True


@dataclass(frozen=True)
class ProbeResult:
    """Spectra by layer name, each layer's role, and where they came from."""

    spectra: dict[str, Spectrum]
    roles: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    report: LoadReport | None = None


def resolve_device(device: str | None) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``, ``cuda``, ``cuda:i`` checked.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise CollapseProbeError(f"--device {device!r}: use auto, cpu, cuda or cuda:INDEX") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CollapseProbeError(f"--device {device}: CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise CollapseProbeError(f"--device {device!r}: use auto, cpu, cuda or cuda:INDEX")
    return resolved


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


def probe_checkpoints(paths: Sequence[str | Path], config: ProbeConfig) -> list[ProbeResult]:
    """Load each checkpoint, stream the data once through all of them, solve every spectrum.

    Layers: ``config.layers`` if given, else each checkpoint's default layers (representation,
    and embedding when it has a projector), else its output. All layers of all checkpoints are
    captured in the same pass and solved in one batched call (equal dimensions share one
    ``eigvalsh``), through :func:`collapse_probe.spectrum`.
    """
    device = resolve_device(config.device)
    loaded = [load_encoder_with_report(p, config.arch, trust_checkpoint=config.trust_checkpoint,
                                       allow_partial=config.allow_partial) for p in paths]
    plans = [_layer_plan(item.default_layers, config.layers) for item in loaded]
    if len(loaded) == 1:  # one model: hook it directly, so messages name its own modules
        target: nn.Module = loaded[0].model
        keys = [list(plans[0]) or [OUTPUT_NAME]]
        hooks: list[str] | None = list(plans[0]) or None
    else:
        target = ModelBundle([item.model for item in loaded])
        keys = [[f"models.m{i}.{name}" for name in plan] or [f"outputs.m{i}"] for i, plan in enumerate(plans)]
        hooks = [key for group in keys for key in group]
    d = config.data
    loader = open_images(d.data, image_size=d.image_size, resize=d.resize, batch_size=d.batch_size,
                         workers=d.workers, max_samples=d.max_samples, strict=d.strict, device=device)
    solved = spectrum(target, loader, layers=hooks, device=device, normalize=config.normalize,
                      max_samples=d.max_samples, precision=config.precision, progress=config.progress)
    if not isinstance(solved, dict):
        solved = {OUTPUT_NAME: solved}
    results = []
    for path, item, plan, group in zip(paths, loaded, plans, keys, strict=True):
        names = list(plan) or [OUTPUT_NAME]
        spectra = {name: _relabel(solved[key], name) for name, key in zip(names, group, strict=True)}
        roles = {name: role for name, role in plan.items() if role} or {OUTPUT_NAME: "output"}
        source = {"checkpoint": str(path), "loaded_as": item.report.kind, "arch": item.report.arch,
                  "data": str(d.data), "n_images": loader.n_images, "n_unreadable_skipped": loader.n_skipped,
                  "image_size": d.image_size, "resize": d.resize or int(d.image_size * 256 / 224),
                  "precision": config.precision or "fp32", "device": str(device)}
        results.append(ProbeResult(spectra, roles, source, item.report))
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
    from collapse_probe.capture import capture_outputs, eval_mode

    shapes: dict[str, str] = {}

    def describe(output: Any) -> str:
        if isinstance(output, torch.Tensor):
            return str(tuple(output.shape))
        if isinstance(output, (tuple, list)):
            return "(" + ", ".join(describe(o) for o in output) + ")"
        return type(output).__name__

    def record(name: str, output: Any) -> None:  # returns None: a forward hook's return value replaces the output
        shapes.setdefault(name, describe(output))

    hookable = not isinstance(model, torch.jit.ScriptModule)  # scripted submodules take no hooks
    modules = {n: m for n, m in model.named_modules() if n} if hookable else {}
    device = resolve_device(device)
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


def compare_sources(sources: Sequence[str | Path], config: ProbeConfig | None) -> tuple[dict[str, Spectrum], dict[str, str]]:
    """Spectra of several checkpoints (probed together, :func:`probe_checkpoints`) and saved files.

    Returns ``({"SOURCE:LAYER": Spectrum}, {"SOURCE:LAYER": role})`` in the order given; SOURCE is
    the file name, or the full path where two file names are equal.
    """
    checkpoints = [s for s in sources if not is_spectrum_file(s)]
    if checkpoints and config is None:
        raise CollapseProbeError("checkpoints need --data DIR (or builtin:NAME) to be probed")
    probed = iter(probe_checkpoints(checkpoints, config) if checkpoints else [])
    names = [Path(s).name for s in sources]
    spectra: dict[str, Spectrum] = {}
    roles: dict[str, str] = {}
    for source, name in zip(sources, names, strict=True):
        result = load_spectra(source) if is_spectrum_file(source) else next(probed)
        label = str(source) if names.count(name) > 1 else name
        for layer, s in result.spectra.items():
            spectra[f"{label}:{layer}"] = s
            roles[f"{label}:{layer}"] = result.roles.get(layer, "")
    return spectra, roles


def write_comparison(spectra: Mapping[str, Spectrum], out: str | Path, *, relative: bool = False) -> dict[str, Path]:
    """Write ``compare.png`` (one overlay plot), ``compare.csv`` and ``compare.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / "compare.png", "csv": out / "compare.csv", "json": out / "compare.json"}
    ax = plot_spectra(spectra, relative=relative)
    ax.figure.savefig(paths["png"], dpi=120)
    to_frame(spectra).to_csv(paths["csv"])
    document = {"format": SPECTRA_FORMAT, "layers": {n: s.to_dict() for n, s in spectra.items()}, "roles": {}, "source": {}}
    paths["json"].write_text(json.dumps(_finite(document), indent=1))
    return paths


def _relabel(s: Spectrum, layer: str) -> Spectrum:
    import dataclasses

    return dataclasses.replace(s, layer=layer)


# ----------------------------------------------------------------------------- files


def spectra_document(result: ProbeResult) -> dict[str, Any]:
    """The JSON document of a :class:`ProbeResult` (format ``collapse-probe/spectra-v1``)."""
    return {"format": SPECTRA_FORMAT, "layers": {n: s.to_dict() for n, s in result.spectra.items()},
            "roles": result.roles, "source": result.source}


def json_report(result: ProbeResult) -> str:
    """:func:`spectra_document` plus a ``metrics`` block per layer, as strict JSON (NaN -> null)."""
    document = spectra_document(result) | {"metrics": {n: s.metrics() for n, s in result.spectra.items()}}
    return json.dumps(_finite(document))


def load_spectra(path: str | Path) -> ProbeResult:
    """Read ``spectrum.json`` (spectra-v1) or a single :meth:`Spectrum.save` file."""
    path = Path(path)
    if not path.is_file():
        raise CollapseProbeError(f"spectrum file not found: {path}")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CollapseProbeError(f"{path} is not a spectrum JSON file ({error})") from None
    if isinstance(document, dict) and document.get("format") == SPECTRUM_FORMAT:
        single = Spectrum.from_dict(document)
        return ProbeResult({single.layer or OUTPUT_NAME: single}, source={"spectrum_file": str(path)})
    if not isinstance(document, dict) or document.get("format") != SPECTRA_FORMAT:
        raise CollapseProbeError(f"{path}: not a collapse-probe spectrum file (format {SPECTRA_FORMAT!r})")
    spectra = {name: Spectrum.from_dict(data) for name, data in document["layers"].items()}
    return ProbeResult(spectra, dict(document.get("roles", {})), {**document.get("source", {}), "spectrum_file": str(path)})


def is_spectrum_file(path: str | Path) -> bool:
    """True for a ``.json`` path (spectrum files are JSON; checkpoints never are)."""
    return Path(path).suffix.lower() == ".json"


def write_outputs(result: ProbeResult, out: str | Path, *, stem: str = "spectrum") -> dict[str, Path]:
    """Write ``{stem}.json``, ``{stem}.csv`` and ``{stem}.png`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(_finite(spectra_document(result)), indent=1))
    to_frame(result.spectra).to_csv(paths["csv"])
    write_plot(result.spectra, paths["png"])
    return paths


def write_plot(spectra: Mapping[str, Spectrum], path: str | Path) -> Path:
    """The paper's sorted log-spectrum plot of every spectrum on one Axes, saved to ``path``."""
    ax = plot_spectra(spectra)
    ax.figure.savefig(path, dpi=120)
    return Path(path)


def finite_metrics(s: Spectrum) -> dict[str, Any]:
    """``s.metrics()`` with NaN/inf as None, ready for strict JSON."""
    return _finite(s.metrics())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def format_table(spectra: Mapping[str, Spectrum], roles: Mapping[str, str] | None = None) -> str:
    """One line per layer: name, role, dim, N, effective rank, RankMe, collapsed dims, stable rank, alpha.

    >>> z = torch.randn(400, 4, dtype=torch.float64)
    >>> print(format_table({"fc": Spectrum.from_embeddings(z)}, {"fc": "representation"}))  # doctest: +ELLIPSIS
    layer  role            dim    N  eff.rank  RankMe  collapsed  stable rank  alpha
    fc     representation    4  400  ...
    """
    roles = roles or {}
    rows = [["layer", "role", *(header for _, header in TABLE_COLUMNS)]]
    for name, s in spectra.items():
        m = s.metrics()
        cells = [name, roles.get(name, "")]
        for key, _ in TABLE_COLUMNS:
            value = m[key]
            if key == "collapsed_dims":
                cells.append(f"{value}/{s.dim}")
            elif isinstance(value, float):
                cells.append("nan" if math.isnan(value) else f"{value:.2f}")
            else:
                cells.append(str(value))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        left = [row[i].ljust(widths[i]) for i in range(2)]
        right = [row[i].rjust(max(widths[i], len(rows[0][i]))) for i in range(2, len(row))]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines)


# ----------------------------------------------------------------------------- embeddings files


def load_embeddings(path: str | Path, key: str | None = None) -> torch.Tensor:
    """An (N, d) array from ``.npy``, ``.pt``/``.pth`` (weights_only) or ``.safetensors``.

    A file holding several tensors needs ``key`` unless exactly one is 2-D or one is called
    ``embeddings``.
    """
    path = Path(path)
    if not path.is_file():
        raise CollapseProbeError(f"embeddings file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            obj: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        elif suffix in (".pt", ".pth", ".bin"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CollapseProbeError(f"{path}: unsupported embeddings file; use .npy, .pt or .safetensors")
    except CollapseProbeError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure is bad input
        raise CollapseProbeError(f"{path}: cannot read embeddings ({describe_error(error)})") from None
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if key is not None:
            if key not in tensors:
                raise CollapseProbeError(f"{path}: no tensor {key!r}; it holds {', '.join(tensors)}")
            obj = tensors[key]
        elif "embeddings" in tensors:
            obj = tensors["embeddings"]
        elif len([v for v in tensors.values() if v.ndim == 2]) == 1:
            obj = next(v for v in tensors.values() if v.ndim == 2)
        else:
            raise CollapseProbeError(f"{path} holds several tensors ({', '.join(tensors)}): pick one with --key")
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise CollapseProbeError(f"{path}: expected an (N, d) array, got {shape}")
    if not obj.is_floating_point():
        obj = obj.double()
    return obj
