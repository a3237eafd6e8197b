"""Which torchvision or timm architecture a bare state_dict belongs to, from its key names and shapes.

Detection runs in two stages, so that it stays fast although torchvision and timm hold some 1,450
classification models between them:

1. **Prefilter, nothing built.** A small index shipped with the package (``arch_index.json.gz``)
   holds, for every model, the multiset of its backbone tensor shapes (the final classifier and
   ``num_batches_tracked`` left out). A model stays a candidate when the file holds every one of
   those shapes at least as often (a momentum copy or a projector only adds shapes). Shapes do not
   depend on key prefixes (``module.``, ``backbone.``, ...), so no prefix has to be guessed here.
2. **Check, on the meta device.** Each candidate is built on the ``meta`` device (no memory, no
   download, no weights: parameter initialisation is skipped), its classifier stripped, and the
   file is fitted to it with the same rules as loading (:func:`collapse_probe.models.loading.fit_weights`:
   best prefix, no shape-mismatched key, no unexpected backbone key, no missing tensor).

Exactly one fitting model is a detection. Keys and shapes cannot tell every model apart: a resnet50
file fits torchvision's resnet50 and timm's resnet50, resnetaa50 and resnetblur50, whose
anti-aliasing holds no weights but changes the forward. So when several fit, they are compared by
running them (3. below): the same tensors loaded into each, one seeded random input, eval mode
(:mod:`collapse_probe.models._forwards`).

3. **Run, on the CPU.** Candidates whose outputs agree to float rounding are one architecture: the
   first is used (torchvision's when it is one of them: SSL checkpoints use its names) and the
   others are named in a note. Candidates whose outputs differ leave the detection ambiguous:
   :attr:`Detection.groups` holds them, one group per distinct output, and loading refuses with
   their names unless ``--arch`` chooses.

No fitting model is reported with the closest candidates and what differs.

The index is regenerated for newer library versions with ``python -m collapse_probe.models._detect
OUT.json.gz``; models missing from it are not candidates (the error says so).
"""

from __future__ import annotations

import gzip
import importlib
import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from collapse_probe.models._forwards import group_by_output, outputs_on_one_input
from collapse_probe.models._registry import find_classifier

INDEX_PATH = Path(__file__).with_name("arch_index.json.gz")
#: Candidates built in stage 2 when no model passes the prefilter: the closest by shape overlap.
N_CLOSEST = 3
#: Never build more than this many candidates (the largest groups of near-identical timm models).
MAX_BUILT = 80

_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.randn, torch.rand,
                        torch.randint, torch.normal, torch.empty_like, torch.zeros_like, torch.ones_like})


class _MetaParameters(TorchFunctionMode):
    """Tensor factories make meta tensors and in-place ops on meta tensors (initialisers) are skipped.

    Unlike ``with torch.device("meta")`` this leaves ``arange``/``linspace``/``pow`` on the CPU, so
    constructors that compute widths with tensors and read them back (torchvision's RegNets) work.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES:
            kwargs["device"] = "meta"
        elif args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.endswith("__"):
                return args[0]
        return func(*args, **kwargs)


def meta_model(library: str, name: str) -> nn.Module:
    """Build ``library``'s model ``name`` (``torchvision`` or ``timm``) on the meta device.

    >>> model = meta_model("torchvision", "resnet18")
    >>> model.conv1.weight.is_meta, tuple(model.fc.weight.shape)
    (True, (1000, 512))
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's GoogLeNet/Inception init FutureWarnings
        with _MetaParameters():
            if library == "torchvision":
                import torchvision

                return torchvision.models.get_model(name, weights=None)
            return importlib.import_module("timm").create_model(name, pretrained=False)


def backbone_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``model``'s state_dict without its final classifier."""
    head = find_classifier(model)
    skip = () if head is None else (head + ".",)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(skip)}


def _shape_key(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "()"


def shape_counts(shapes: Mapping[str, tuple[int, ...]]) -> Counter:
    """The multiset of shapes, as ``"64x3x7x7" -> count``."""
    return Counter(_shape_key(s) for k, s in shapes.items() if not k.endswith("num_batches_tracked"))


# ----------------------------------------------------------------------------- the index


def timm_installed() -> bool:
    """True when timm can be imported (its models are then candidates too)."""
    try:
        importlib.import_module("timm")
    except ImportError:
        return False
    return True


def _library_models() -> dict[str, list[str]]:
    import torchvision

    found = {"torchvision": sorted(torchvision.models.list_models(module=torchvision.models))}
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        return found
    found["timm"] = sorted(timm.list_models())
    return found


def build_index(progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build every torchvision/timm classification model on the meta device and index its shapes."""
    import torchvision

    index: dict[str, Any] = {"versions": {"torchvision": torchvision.__version__}, "models": {}, "unbuildable": []}
    for library, names in _library_models().items():
        if library == "timm":
            index["versions"]["timm"] = importlib.import_module("timm").__version__
        for name in names:
            try:
                shapes = backbone_shapes(meta_model(library, name))
            except Exception as error:  # noqa: BLE001 - a model that cannot be built is no candidate
                index["unbuildable"].append(f"{library}/{name}")
                if progress:
                    progress(f"skipped {library}/{name}: {type(error).__name__}")
                continue
            index["models"][f"{library}/{name}"] = dict(shape_counts(shapes))
    return index


@lru_cache(maxsize=1)
def load_index() -> dict[str, Any]:
    """The shipped index (see the module docstring); empty when the file is absent."""
    if not INDEX_PATH.exists():
        return {"versions": {}, "models": {}}
    with gzip.open(INDEX_PATH, "rt") as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Candidate:
    """One model checked against the file: its fit (``fit_weights`` fields) and what does not fit."""

    library: str
    name: str
    fit: dict[str, Any]
    problems: tuple[str, ...]

    @property
    def spec(self) -> str:
        """``library/name``, which ``--arch`` accepts."""
        return f"{self.library}/{self.name}"

    def differences(self) -> str:
        """Counts of what differs, in words (``fits`` when nothing does)."""
        fit = self.fit
        missing = [k for k in fit["missing_keys"] if not k.endswith("num_batches_tracked")]
        if not self.problems:
            return "fits"
        return (f"{len(missing)} missing, {len(fit['mismatched_keys'])} shape-mismatched, "
                f"{len(fit['unexpected_backbone_keys'])} unexpected backbone keys")

    @property
    def badness(self) -> int:
        fit = self.fit
        missing = [k for k in fit["missing_keys"] if not k.endswith("num_batches_tracked")]
        return len(missing) + len(fit["mismatched_keys"]) + len(fit["unexpected_backbone_keys"])


@dataclass(frozen=True)
class Detection:
    """The result of :func:`detect_arch`: the fitting candidates, the closest others, counts and time.

    ``groups``: when the fitting candidates were run (several fit), one tuple per distinct output;
    ``failures``: spec -> why a candidate could not run.
    """

    matches: tuple[Candidate, ...]
    closest: tuple[Candidate, ...]
    n_indexed: int
    n_built: int
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    groups: tuple[tuple[Candidate, ...], ...] = ()
    failures: dict[str, str] = field(default_factory=dict)

    def describe_groups(self) -> str:
        """The distinct forwards in one line: ``torchvision/resnet18 (= timm/resnet18), timm/resnetblur18``."""
        def one(group: tuple[Candidate, ...]) -> str:
            same = f" (= {', '.join(c.spec for c in group[1:])})" if len(group) > 1 else ""
            failed = f" ({self.failures[group[0].spec]})" if group[0].spec in self.failures else ""
            return group[0].spec + same + failed
        return ", ".join(one(g) for g in self.groups)

    def describe(self, n: int = N_CLOSEST) -> str:
        """The candidates in one line: ``torchvision/resnet50 (fits), timm/... (3 missing, ...)``."""
        shown = list(self.matches) + [c for c in self.closest if c not in self.matches]
        return "; ".join(f"{c.spec} ({c.differences()})" for c in shown[:max(n, len(self.matches))])


def check_candidate(library: str, name: str, state_dict: Mapping[str, torch.Tensor]) -> Candidate | None:
    """Build ``library/name`` on the meta device and fit ``state_dict`` to it (None: cannot be built)."""
    from collapse_probe.models._fit import fit_weights
    from collapse_probe.models._keymaps import remap_sequential_children
    from collapse_probe.models._report import LoadReport

    try:
        model = meta_model(library, name)
    except Exception:  # noqa: BLE001 - an unbuildable model is no candidate
        return None
    shapes = backbone_shapes(model)
    children = [child for child, _ in model.named_children()]
    fit = fit_weights(shapes, remap_sequential_children(state_dict, children, set(shapes))[0])
    problems = tuple(LoadReport("", "", **{k: v for k, v in fit.items() if k != "usable"}).problems())
    return Candidate(library, name, fit, problems)


def _overlap(model: Mapping[str, int], file: Counter) -> tuple[bool, float]:
    """(every shape of the model is in the file as often, fraction of its tensors found)."""
    total = sum(model.values())
    found = sum(min(count, file.get(shape, 0)) for shape, count in model.items())
    return found == total, found / max(total, 1)


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> Detection:
    """Find the torchvision/timm models whose keys and shapes the state_dict fits (module docstring).

    >>> import torchvision
    >>> found = detect_arch(torchvision.models.resnet18().state_dict())
    >>> [c.spec for c in found.matches]
    ['torchvision/resnet18']
    """
    start = time.perf_counter()
    index = load_index()
    libraries = _library_models()
    available = {f"{lib}/{n}" for lib, names in libraries.items() for n in names}
    models = {spec: counts for spec, counts in index["models"].items() if spec in available}
    notes = []
    unindexed = len(available - set(models) - set(index.get("unbuildable", ())))
    if unindexed:
        notes.append(f"{unindexed} installed models are not in the shape index (built for "
                     f"{', '.join(f'{k} {v}' for k, v in index['versions'].items()) or 'nothing'}): not candidates")
    file_counts = shape_counts({k: tuple(v.shape) for k, v in state_dict.items()})
    scored = sorted(((_overlap(counts, file_counts), spec) for spec, counts in models.items()),
                    key=lambda item: (not item[0][0], -item[0][1], not item[1].startswith("torchvision/"), item[1]))
    contained = [spec for (full, _), spec in scored if full]
    to_build = contained[:MAX_BUILT] or [spec for _, spec in scored[:N_CLOSEST]]
    if len(contained) > MAX_BUILT:
        notes.append(f"{len(contained)} models pass the shape prefilter: only the first {MAX_BUILT} were checked")
    checked = [c for spec in to_build if (c := check_candidate(*spec.split("/", 1), state_dict)) is not None]
    matches = sorted((c for c in checked if not c.problems), key=lambda c: (c.library != "torchvision", c.spec))
    groups, failures = _run_to_tell_apart(matches)
    if len(groups) == 1 and len(matches) > 1:  # one forward: torchvision's names (SSL checkpoints use them)
        others = ", ".join(c.spec for c in groups[0][1:])
        notes.append(f"also fit, with identical keys and shapes and the same output on a test input: {others}")
        matches = [groups[0][0]]
    closest = sorted((c for c in checked if c.problems), key=lambda c: (c.badness, c.library != "torchvision", c.spec))
    return Detection(tuple(matches), tuple(closest[:N_CLOSEST]), len(models), len(checked),
                     time.perf_counter() - start, tuple(notes), groups, failures)


def _run_to_tell_apart(matches: list[Candidate]) -> tuple[tuple[tuple[Candidate, ...], ...], dict[str, str]]:
    """Several fitting candidates grouped by their output on one input (module docstring, stage 3)."""
    if len(matches) < 2:
        return (), {}
    outputs = outputs_on_one_input([c.spec for c in matches], [c.fit["usable"] for c in matches])
    groups = tuple(tuple(matches[i] for i in group) for group in group_by_output(outputs))
    failures = {c.spec: o for c, o in zip(matches, outputs, strict=True) if isinstance(o, str)}
    return groups, failures


def main(argv: list[str] | None = None) -> None:
    """``python -m collapse_probe.models._detect OUT.json.gz``: write the shape index for the installed libraries."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else INDEX_PATH
    index = build_index(progress=lambda line: print(line, file=sys.stderr))
    with gzip.GzipFile(out, "wb", mtime=0) as handle:  # mtime 0: the same index gives the same bytes
        handle.write(json.dumps(index, separators=(",", ":"), sort_keys=True).encode())
    print(f"{out}: {len(index['models'])} models ({index['versions']})", file=sys.stderr)


if __name__ == "__main__":
    main()
