"""Comparing a spectrum with a saved baseline: are the two comparable, and how noisy is the drop?

Three questions come before a ``max-drop`` verdict (:func:`~collapse_probe.checks.verdicts.run_checks`):

1. **Comparable at all?** The same metric computed under different conventions is a different
   number (centred or not, L2-normalised or not, ddof) and spectra of different dimension d
   bound different things: :func:`incomparable` names what differs, and the check refuses
   (``CollapseProbeError``, exit 2) rather than give a verdict.
2. **Same sample count?** Effective rank and RankMe of N samples change with N, so a drop
   between a run of N and a baseline of more than 2N (or less than N/2) samples is partly the
   sample count's: :func:`sample_count_warning` (a warning, not a refusal).
3. **Paired or independent error bars?** With leave-one-group-out replicates ``a_(k)`` of the
   new spectrum and ``b_(k)`` of the baseline, both from the *same* images in the *same* K groups,
   the error of the difference is the paired jackknife

       SE = sqrt((K - 1) / K * sum_k (d_(k) - mean d)^2),   d_(k) = b_(k) - a_(k),

   which cancels the noise the two share (the images). Two probes of the same images are
   strongly correlated, so the combined ``sqrt(se_a^2 + se_b^2)``, right only for independent
   samples, overstates the noise many-fold (a 44-SE drop read as 0.73 SE in issue 17). Pairing
   needs both spectra to hold replicates (``Spectrum.extra["jackknife"]``, written by
   :class:`~collapse_probe.metrics.grouped.GroupedAccumulator`) with the same K, assignment,
   samples and batches per group, *and* a record that they saw the same data (the CLI's
   ``source``: data path, image count, preprocessing; :func:`data_difference`). Otherwise the
   combined error is used and the verdict says the bars are unpaired, and why (:func:`drop_error`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.functional import metrics as cpf
from collapse_probe.results.spectrum import Spectrum

#: What must agree for two spectra to be compared by max-drop.
COMPARED = ("center", "normalize", "ddof", "dim")
#: Sample counts further apart than this factor draw a warning.
SAMPLE_RATIO = 2.0
#: The ``source`` entries that say which samples were probed (data/images.py subsets folders with a
#: fixed seed and built-in sets by taking the first N, so data + count fixes the samples).
DATA_KEYS = ("data", "n_images", "n_texts", "n_unreadable_skipped", "n_blank_lines_skipped", "image_size",
             "resize", "max_length", "preprocessing", "max_samples", "sample_seed", "data_fingerprint")


def layer_pairs(spectra: Mapping[str, Spectrum], baseline: Mapping[str, Spectrum]) -> list[tuple[str, str]]:
    """(probed layer, baseline layer): the layers both hold, else the only layer of each."""
    common = [name for name in spectra if name in baseline]
    if common:
        return [(name, name) for name in common]
    if len(spectra) == 1 and len(baseline) == 1:
        return [(next(iter(spectra)), next(iter(baseline)))]
    raise CollapseProbeError(
        f"the baseline has no layer in common with the probe (baseline: {', '.join(baseline)}; "
        f"probed: {', '.join(spectra)}); probe the same --layer"
    )


def _setting(s: Spectrum, name: str) -> Any:
    return s.dim if name == "dim" else getattr(s, name)


def incomparable(layer: str, s: Spectrum, base_layer: str, reference: Spectrum) -> str | None:
    """One line naming every convention or dimension that differs, or None when comparable.

    >>> import torch
    >>> z = torch.randn(50, 3, dtype=torch.float64)
    >>> a, b = Spectrum.from_embeddings(z), Spectrum.from_embeddings(z, normalize=True)
    >>> incomparable("fc", a, "fc", b)
    "baseline 'fc' was made with normalize=True, this run with normalize=False"
    >>> incomparable("fc", a, "fc", a) is None
    True
    """
    differ = [name for name in COMPARED if _setting(s, name) != _setting(reference, name)]
    if not differ:
        return None
    this = "this run" if layer == base_layer else f"this run's {layer!r}"
    return (f"baseline {base_layer!r} was made with {', '.join(f'{n}={_setting(reference, n)}' for n in differ)}, "
            f"{this} with {', '.join(f'{n}={_setting(s, n)}' for n in differ)}")


def check_comparable(spectra: Mapping[str, Spectrum], baseline: Mapping[str, Spectrum]) -> list[tuple[str, str]]:
    """:func:`layer_pairs`, after refusing (one line, exit 2 in the CLI) any pair :func:`incomparable` finds."""
    pairs = layer_pairs(spectra, baseline)
    problems = [text for layer, base in pairs if (text := incomparable(layer, spectra[layer], base, baseline[base]))]
    if problems:
        raise CollapseProbeError(
            "; ".join(problems) + ": a drop is only meaningful between spectra of the same conventions and "
            "dimension; probe both the same way (--center/--no-center, --normalize/--no-normalize, the same --layer)"
        )
    return pairs


def sample_count_warning(layer: str, s: Spectrum, reference: Spectrum, ratio: float = SAMPLE_RATIO) -> str | None:
    """A one-line warning when the sample counts differ by more than ``ratio``; else None."""
    n, n_base = s.n_samples, reference.n_samples
    if min(n, n_base) <= 0 or max(n, n_base) <= ratio * min(n, n_base):
        return None
    factor = max(n, n_base) / min(n, n_base)
    return (f"max-drop [{layer}]: the baseline has {n_base} samples, this run {n} ({factor:.3g}x "
            f"{'fewer' if n < n_base else 'more'}): effective rank and RankMe change with the sample count, so "
            "part of any difference is the count's; probe both on the same images (--max-samples)")


def data_difference(source: Mapping[str, Any] | None, baseline_source: Mapping[str, Any] | None) -> str | None:
    """None when both sources record the same data (:data:`DATA_KEYS`); else why they cannot be paired.

    Both must record ``data`` and a count (``n_images`` or ``n_texts``); every key both record
    must agree.

    >>> data_difference({"data": "val/", "n_images": 400}, {"data": "val/", "n_images": 400}) is None
    True
    >>> data_difference({"data": "val/", "n_images": 400}, {"data": "val/", "n_images": 500})
    'different data (baseline n_images=500, this run n_images=400)'
    """
    mine = {k: v for k, v in (source or {}).items() if k in DATA_KEYS}
    theirs = {k: v for k, v in (baseline_source or {}).items() if k in DATA_KEYS}
    unknown = [name for name, record in (("this run", mine), ("the baseline", theirs))
               if not record.get("data") or not ({"n_images", "n_texts"} & set(record))]
    if unknown:
        return f"the data {' and '.join(unknown)} {'were' if len(unknown) > 1 else 'was'} probed on is not recorded"
    # what only one side records (a newer file's fingerprint) neither pairs nor unpairs them
    differ = [k for k in DATA_KEYS if k in mine and k in theirs and mine[k] != theirs[k]]
    if differ:
        return (f"different data (baseline {', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}, "
                f"this run {', '.join(f'{k}={mine.get(k)!r}' for k in differ)})")
    return None


def _grouping(s: Spectrum) -> dict[str, Any] | None:
    record = s.extra.get("jackknife") if isinstance(s.extra, Mapping) else None
    return record if isinstance(record, Mapping) and isinstance(record.get("replicates"), Mapping) else None


def _replicates(s: Spectrum, metric: str) -> torch.Tensor | None:
    record = _grouping(s)
    values = None if record is None else record["replicates"].get(metric)
    if not isinstance(values, list) or len(values) < 2:
        return None
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)


def _group_difference(s: Spectrum, reference: Spectrum) -> str | None:
    """None when both spectra were grouped alike (K, assignment, samples and batches per group)."""
    mine, theirs = _grouping(s), _grouping(reference)
    keys = ("groups", "assignment", "group_sizes", "group_batches")
    differ = [k for k in keys if mine.get(k) != theirs.get(k)]
    if not differ:
        return None
    return "different groups (" + "; ".join(f"{k}: baseline {_short(theirs.get(k))}, this run {_short(mine.get(k))}"
                                            for k in differ) + ")"


def _short(value: Any, shown: int = 6) -> str:
    """A list cut to its first ``shown`` items, for one-line messages."""
    if isinstance(value, list) and len(value) > shown:
        return "[" + ", ".join(map(str, value[:shown])) + f", ... ({len(value)} in all)]"
    return str(value)


@dataclass(frozen=True)
class DropError:
    """The standard error of ``baseline - value``; ``paired`` says which formula, ``why`` the reason."""

    se: float
    paired: bool
    why: str


def drop_error(metric: str, s: Spectrum, reference: Spectrum, data: str | None) -> DropError:
    """The paired jackknife SE of the drop when both spectra share data and groups, else the combined one.

    ``data`` is :func:`data_difference` of the two sources (None: the same data). Both spectra
    must carry ``stderr[metric]`` (the caller checks).
    """
    a, b = _replicates(s, metric), _replicates(reference, metric)
    if a is None or b is None:
        missing = [name for name, r in (("this run", a), ("the baseline", b)) if r is None]
        why = (f"{' and '.join(missing)} {'hold' if len(missing) > 1 else 'holds'} no jackknife replicates, "
               "written before they were saved")
    else:
        why = _group_difference(s, reference) or data or ""
        if not why and a.numel() == b.numel():
            return DropError(cpf.jackknife_stderr(b - a), True, "same data and groups")
        why = why or "different numbers of replicates"
    return DropError(math.hypot(s.stderr[metric], reference.stderr[metric]), False, why)


def drop_bound(metric: str, s: Spectrum, reference: Spectrum, max_drop: float | None, max_drop_sigma: float | None,
               layer: str, data: str | None) -> tuple[float, str, DropError | None]:
    """The lowest passing value of ``metric`` against the baseline, the message's detail, and the error used.

    ``(1 - max_drop) * b`` alone; ``b - Z * se`` alone (``se`` from :func:`drop_error`); with both,
    the lower of the two: the drop must be both larger than allowed and larger than noise.
    """
    base = getattr(reference, metric)
    bounds = [] if max_drop is None else [(1 - max_drop) * base]
    if max_drop_sigma is None:
        return bounds[0], "", None
    missing = [name for name, spectrum in (("probed", s), ("baseline", reference)) if metric not in spectrum.stderr]
    if missing:
        raise CollapseProbeError(
            f"--max-drop-sigma needs standard errors of {metric} [{layer}] in both spectra; the "
            f"{' and '.join(missing)} spectrum has none: probe with --groups K (spectrum(..., groups=K))"
        )
    error = drop_error(metric, s, reference, data)
    bounds.append(base - max_drop_sigma * error.se)
    value = getattr(s, metric)
    drop = base - value
    sigmas = drop / error.se if error.se > 0 else math.copysign(math.inf, drop)
    how = f"paired SE (SE {error.se:.2g}: {error.why})" if error.paired else \
        f"combined SE (SE {error.se:.2g}; unpaired: {error.why})"
    detail = (f"{metric} = {value:.4g} +- {s.stderr[metric]:.2g}, baseline {base:.4g} +- "
              f"{reference.stderr[metric]:.2g}: drop {drop:.3g} = {sigmas:.2f} {how}")
    return min(bounds), detail, error
