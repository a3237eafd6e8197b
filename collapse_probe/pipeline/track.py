"""Collapse over training: :func:`track` probes a folder (glob, list) of checkpoints on one sample.

Every checkpoint is probed as ``spectrum`` probes it (:func:`load_encoder_with_report`, the data
:func:`~collapse_probe.pipeline.data.open_data` would open, :func:`collapse_probe.spectrum`), so
its numbers are ``spectrum``'s, but:

* the images are decoded once for all checkpoints (:mod:`._track_cache`): K checkpoints cost one
  decode and K forward passes;
* each result is written the moment it is done, keyed by the checkpoint's content and the
  options (:mod:`._track_store`): a rerun probes only new or changed checkpoints, a killed run
  loses nothing, an unreadable checkpoint is reported and skipped;
* the checkpoints are ordered by the step they record (:mod:`._track_sources`).

>>> # in a notebook:
>>> # trajectory = track(["runs/demo/checkpoints"], data="builtin:digits", out="track_out")
>>> # trajectory.table            # pandas: one row per checkpoint and layer
>>> # trajectory.spectra          # {checkpoint: {layer: Spectrum}}
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from collapse_probe._utils.devices import parse_device
from collapse_probe.data.images import describe_error
from collapse_probe.errors import CollapseProbeError
from collapse_probe.models.loading import LoadedEncoder, load_encoder_with_report
from collapse_probe.pipeline._track_cache import (
    ImageCache,
    Plan,
    build_cache,
    cache_budget_bytes,
    cache_key,
    plan_for,
    same_as_spectrum,
)
from collapse_probe.pipeline._track_report import step_text, write_trajectory
from collapse_probe.pipeline._track_sources import Checkpoint, expand_sources, order_checkpoints
from collapse_probe.pipeline._track_store import (
    HashCache,
    ResultStore,
    data_signature,
    options_key,
    result_of,
)
from collapse_probe.pipeline.checkpoints import ProbeConfig, _probe_loaded, _relabel, layer_plan
from collapse_probe.pipeline.data import DataConfig, _note_preprocessing, open_data
from collapse_probe.pipeline.outputs import OUTPUT_NAME, ProbeResult
from collapse_probe.probe.stream import spectrum
from collapse_probe.results.spectrum import Spectrum
from collapse_probe.results.trajectory import Point, drop_gate, trajectory_frame

#: ``--cache-memory``: decoded images up to this many MiB stay in memory, more go to one file.
DEFAULT_CACHE_MIB = 2048
Log = Callable[[str], None]


@dataclass(frozen=True)
class Gate:
    """Fail when a watched metric of the latest checkpoint fell more than ``max_drop`` (a fraction)
    from its best, or more than ``max_step_drop`` since the checkpoint before."""

    metrics: tuple[str, ...] = ("effective_rank",)
    max_drop: float | None = None
    max_step_drop: float | None = None


@dataclass
class TrackedCheckpoint:
    """One checkpoint's fate: ``status`` is ``probed`` (now), ``stored`` (an earlier run's result,
    same content and options), ``failed`` (``error`` says why), ``duplicate`` (same content as
    ``duplicate_of``) or ``not reached`` (the run was interrupted first)."""

    checkpoint: Checkpoint
    status: str
    sha256: str | None = None
    result: ProbeResult | None = None
    load_summary: str = ""
    error: str | None = None
    duplicate_of: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    #: True: the inputs came from the one decode; False: decoded for this checkpoint (text, labels,
    #: a processor that cannot be split); None: not probed by this run
    cached_input: bool | None = None

    @property
    def path(self) -> Path:
        return self.checkpoint.path


@dataclass
class Trajectory:
    """What :func:`track` returns: every checkpoint in step order, the table, the gate."""

    checkpoints: list[TrackedCheckpoint]
    table: pd.DataFrame
    gate: dict[str, Any] | None
    settings: dict[str, Any]
    timings: dict[str, float]

    @property
    def spectra(self) -> dict[str, dict[str, Spectrum]]:
        """checkpoint path -> layer -> :class:`Spectrum`, in step order."""
        return {str(c.path): c.result.spectra for c in self.checkpoints if c.result is not None}

    @property
    def steps(self) -> dict[str, float]:
        """checkpoint path -> its step."""
        return {str(c.path): c.checkpoint.step for c in self.checkpoints if c.result is not None}

    @property
    def failed(self) -> list[TrackedCheckpoint]:
        return [c for c in self.checkpoints if c.status == "failed"]

    @property
    def probed(self) -> list[Path]:
        """The checkpoints probed by this run (not taken from an earlier run's results)."""
        return [c.path for c in self.checkpoints if c.status == "probed"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Tracker:
    """Probes checkpoints one at a time with one image cache, one result store and one options
    key; :func:`track` and ``--watch`` feed it."""

    def __init__(self, config: ProbeConfig, out: str | Path | None, *, cache_mib: float = DEFAULT_CACHE_MIB,
                 log: Log | None = None):
        self.config, self.out = config, None if out is None else Path(out)
        self.log = log or (lambda _: None)
        self.device = parse_device(config.options.device or "auto")
        self.data_id = data_signature(config.data.data, config.data.max_samples)
        self.key = options_key(config, self.data_id, self.device.type)
        state = None if self.out is None else self.out / "track"
        self.cache_folder = state
        self.store = ResultStore(self.out)
        self.hashes = HashCache(None if state is None else state / "hashes.json")
        self.budget = cache_budget_bytes(cache_mib)
        self.caches: dict[str, ImageCache] = {}
        self.verified: dict[tuple[str, str], bool] = {}
        self.seen: dict[str, Path] = {}
        self.decode_seconds = 0.0

    def visit(self, checkpoint: Checkpoint) -> TrackedCheckpoint:
        """Probe one checkpoint, or take its stored result; never raises for a bad checkpoint."""
        entry = TrackedCheckpoint(checkpoint, "failed")
        try:
            entry.sha256 = self.hashes.sha256(checkpoint.path)
        except OSError as error:
            entry.error = f"cannot read it ({error.strerror or error})"
            return entry
        if entry.sha256 in self.seen and self.seen[entry.sha256] != checkpoint.path:
            entry.status, entry.duplicate_of = "duplicate", str(self.seen[entry.sha256])
            return entry
        self.seen[entry.sha256] = checkpoint.path
        record = self.store.load(entry.sha256, self.key)
        if record is not None:
            result = result_of(record)
            result.source["checkpoint"] = str(checkpoint.path)
            entry.status, entry.result = "stored", result
            entry.load_summary, entry.seconds = record.get("load_summary", ""), record.get("seconds", {})
            return entry
        try:
            result, entry.seconds, entry.cached_input = self._probe(checkpoint.path)
        except CollapseProbeError as error:
            entry.error = str(error)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError) as error:
            entry.error = describe_error(error)  # a damaged file fails in many ways: it is skipped, not fatal
        else:
            entry.status, entry.result = "probed", result
            entry.load_summary = result.report.summary() if result.report is not None else ""
            self.store.save(entry.sha256, self.key, result, {"load_summary": entry.load_summary,
                                                             "seconds": entry.seconds})
        self.hashes.save()
        return entry

    # ------------------------------------------------------------------ one probe
    def _probe(self, path: Path) -> tuple[ProbeResult, dict[str, float], bool]:
        start = time.perf_counter()
        config, d = self.config, self.config.data
        item = load_encoder_with_report(path, config.arch, trust_checkpoint=config.trust_checkpoint,
                                        allow_partial=config.allow_partial)
        loaded_at = time.perf_counter()
        plan = plan_for(path, item, d)
        cache = self._cache(plan, d) if plan is not None else None
        if cache is not None and not self._same_as_spectrum(plan, path, item, cache):
            cache = None
        decoded_at = time.perf_counter()
        if cache is None:  # decoded for this checkpoint, exactly as spectrum does
            result = _probe_loaded([path], [item], config, self.device)[0]
        else:
            _, data_source = open_data([path], [item], d, self.device)  # what spectrum records of its data
            result = self._spectrum(path, item, cache.batches(plan.normalise), data_source)
        done = time.perf_counter()
        return result, {"load": loaded_at - start, "forward": done - decoded_at}, cache is not None

    def _cache(self, plan: Plan, d: DataConfig) -> ImageCache | None:
        key = cache_key(plan, d, self.data_id)
        if key not in self.caches:
            try:
                cache = build_cache(plan, d, key=key, budget_bytes=self.budget, folder=self.cache_folder, log=self.log)
            except CollapseProbeError:
                if not plan.key.startswith("processor-"):
                    raise
                self.log(f"{plan.key}: the processor's resize and crop cannot be cached as 8-bit pixels; "
                         "its checkpoints decode their own images")
                cache = None
            if cache is not None and not cache.reused:
                self.decode_seconds += cache.decode_seconds
            self.caches[key] = cache
        return self.caches[key]

    def _same_as_spectrum(self, plan: Plan, path: Path, item: LoadedEncoder, cache: ImageCache) -> bool:
        key = (plan.key, plan.norm_key)
        if key not in self.verified:
            self.verified[key] = same_as_spectrum(path, item, self.config.data, cache, plan)
            if not self.verified[key]:
                self.log(f"{plan.norm_key}: inputs from the decoded images differ from spectrum's for {path.name}: "
                         "checkpoints of this kind decode their own images")
        return self.verified[key]

    def _spectrum(self, path: Path, item: LoadedEncoder, loader: Any, data_source: dict[str, Any]) -> ProbeResult:
        """One model, one pass over the cached batches: what ``_probe_loaded`` does for one checkpoint
        (unlabelled images only: labelled batches are never cached)."""
        plan = layer_plan(item.default_layers, self.config.layers)
        names = list(plan) or [OUTPUT_NAME]
        # the cache holds the sample (--max-samples images): no row cap on top, as spectrum
        options = self.config.options.replace(layers=list(plan) or None, device=self.device, max_samples=None)
        solved = spectrum(item.model, loader, options)
        if not isinstance(solved, dict):
            solved = {OUTPUT_NAME: solved}
        if "n_unreadable_skipped" in data_source:
            data_source["n_unreadable_skipped"] = loader.n_skipped
        spectra = {name: _relabel(solved[name], name) for name in names}
        roles = {name: role for name, role in plan.items() if role} or {OUTPUT_NAME: "output"}
        report = _note_preprocessing(item.report, data_source)
        source = {"checkpoint": str(path), "loaded_as": report.kind, "arch": report.arch, **data_source,
                  **self.config.options.conventions(), "device": str(self.device), "load": report.to_dict()}
        return ProbeResult(spectra, roles, source, report)

    # ------------------------------------------------------------------ the result
    def trajectory(self, entries: Sequence[TrackedCheckpoint], gate: Gate | None = None) -> Trajectory:
        """The table (and gate) of ``entries``; only checkpoints with a result have rows."""
        points = [Point(str(e.path), e.checkpoint.step, e.result.spectra, e.result.roles, _extra(e))
                  for e in entries if e.result is not None]
        table = trajectory_frame(points)
        verdict = None
        if gate is not None and (gate.max_drop is not None or gate.max_step_drop is not None) and len(table):
            unknown = [m for m in gate.metrics if m not in table.columns]
            if unknown:
                raise CollapseProbeError(f"--gate-metric {unknown[0]}: no such metric in the table")
            verdict = drop_gate(table, gate.metrics, max_drop=gate.max_drop, max_step_drop=gate.max_step_drop)
        seconds = [e.seconds for e in entries if e.status == "probed"]
        timings = {"decode_s": self.decode_seconds, "load_s": sum(s.get("load", 0.0) for s in seconds),
                   "forward_s": sum(s.get("forward", 0.0) for s in seconds), "n_probed": len(seconds)}
        first = next((e.result.source for e in entries if e.result is not None), {})
        return Trajectory(list(entries), table, verdict, self.settings(first), timings)

    def settings(self, source: dict[str, Any]) -> dict[str, Any]:
        """What was probed how: the data as the first result records it, the layers, the conventions."""
        d = self.config.data
        found = {key: source[key] for key in ("n_images", "n_texts", "image_size", "resize", "preprocessing")
                 if source.get(key) is not None}
        caches = sorted({cache.where for cache in self.caches.values() if cache is not None})
        return {"data": d.data, "max_samples": d.max_samples, **found, "batch_size": d.batch_size,
                "layers": list(self.config.layers) or "each checkpoint's defaults", "arch": self.config.arch,
                "device": str(self.device), **self.config.options.conventions(),
                **({"decoded images kept in": ", ".join(caches)} if caches else {})}


def _extra(entry: TrackedCheckpoint) -> dict[str, Any]:
    source = entry.result.source
    return {"name": entry.path.name, "step_origin": entry.checkpoint.origin,
            "n_inputs": source.get("n_images", source.get("n_texts")),
            "n_unreadable_skipped": source.get("n_unreadable_skipped", 0), "sha256": (entry.sha256 or "")[:16]}


def _as_config(config: ProbeConfig | None, data: str | None, **data_options: Any) -> ProbeConfig:
    if config is not None:
        return config if data is None else replace(config, data=replace(config.data, data=data, **data_options))
    if data is None:
        raise CollapseProbeError("track needs data: pass data='DIR' (or builtin:NAME) or a ProbeConfig")
    return ProbeConfig(DataConfig(data, **data_options))


def track(sources: Sequence[str | Path] | str | Path, config: ProbeConfig | None = None, *, data: str | None = None,
          out: str | Path | None = None, gate: Gate | None = None, cache_mib: float = DEFAULT_CACHE_MIB,
          log: Log | None = None, **data_options: Any) -> Trajectory:
    """Probe every checkpoint of ``sources`` on one sample of the data; the trajectory, in step order.

    ``sources``: folders of checkpoints, globs, or checkpoints (anything ``spectrum`` takes).
    ``config``: the :class:`ProbeConfig` (``data=`` and ``image_size=``, ``max_samples=``, ... of
    :class:`DataConfig` build one). ``out``: where results are kept (``OUT/track/``) and the
    trajectory files written (:func:`~collapse_probe.pipeline._track_report.write_trajectory`);
    None: nothing is kept. ``log``: progress lines (default: stderr when ``config.options.progress``).
    Ctrl-C stops after writing what is done (then re-raised): a rerun continues from there.
    """
    config = _as_config(config, data, **data_options)
    log = log if log is not None else (_stderr if config.options.progress else None)
    ordered = order_checkpoints(expand_sources([sources] if isinstance(sources, (str, Path)) else sources))
    tracker = Tracker(config, out, cache_mib=cache_mib, log=log)
    print_order(ordered, tracker.log)
    entries: list[TrackedCheckpoint] = []
    try:
        for index, checkpoint in enumerate(ordered, 1):
            entries.append(tracker.visit(checkpoint))
            tracker.log(progress_line(entries[-1], index, len(ordered)))
    except KeyboardInterrupt:
        entries += [TrackedCheckpoint(c, "not reached") for c in ordered[len(entries):]]
        if out is not None:
            write_trajectory(tracker.trajectory(entries, gate), out)
        raise
    trajectory = tracker.trajectory(entries, gate)
    if out is not None:
        write_trajectory(trajectory, out)
    return trajectory


def print_order(ordered: Sequence[Checkpoint], log: Log) -> None:
    """The order and where each step came from, one line each."""
    log(f"{len(ordered)} checkpoint(s), in step order:")
    for c in ordered:
        log(f"  step {step_text(c.step)}  {c.path}  ({c.origin})")


def progress_line(entry: TrackedCheckpoint, index: int, total: int) -> str:
    """``[3/10] step 300 epoch_0003.pt: probed in 1.2 s (load 0.1 s)`` and the like."""
    head = f"[{index}/{total}] step {step_text(entry.checkpoint.step)} {entry.path.name}: "
    if entry.status == "probed":
        s = entry.seconds
        return head + f"probed (forward {s.get('forward', 0):.1f} s, load {s.get('load', 0):.1f} s)"
    if entry.status == "stored":
        return head + "already probed (same content and options): taken from the stored result"
    if entry.status == "duplicate":
        return head + f"same content as {entry.duplicate_of}: skipped"
    return head + f"FAILED, skipped: {entry.error}"
