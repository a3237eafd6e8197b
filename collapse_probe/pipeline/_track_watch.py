"""``track --watch``: poll a training run's folder and probe each checkpoint once it is complete.

A checkpoint is complete when it loads, or when its size and modification time (of every file,
for a folder) are the same at two polls in a row. A file that fails to load while it is still
changing is not reported: it is tried again once it stops changing, and only a complete file
that still fails is reported and skipped (exit 1 at the end). A Hugging Face folder is probed
only once it is stable (its weights may still be on their way while ``config.json`` is there).
Each checkpoint probed updates the trajectory files at once; the run ends at Ctrl-C or after
``timeout_s`` seconds, with the gate judged on what was probed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from collapse_probe.pipeline._track_report import write_trajectory
from collapse_probe.pipeline._track_sources import (
    Checkpoint,
    expand_sources,
    order_checkpoints,
    recorded_steps,
    signature,
)
from collapse_probe.pipeline.checkpoints import ProbeConfig
from collapse_probe.pipeline.track import (
    DEFAULT_CACHE_MIB,
    Gate,
    Log,
    TrackedCheckpoint,
    Tracker,
    Trajectory,
    _stderr,
    progress_line,
)


class _Watched:
    """What one poll knows of each path: its signature last time, its steps, its final entry."""

    def __init__(self) -> None:
        self.signatures: dict[Path, tuple] = {}
        self.steps: dict[Path, tuple[tuple, dict[str, float] | None]] = {}
        self.entries: dict[Path, tuple[tuple, TrackedCheckpoint]] = {}

    def steps_of(self, path: Path, sig: tuple) -> dict[str, float] | None:
        known = self.steps.get(path)
        if known is None or known[0] != sig:
            self.steps[path] = (sig, recorded_steps(path))
        return self.steps[path][1]

    def ordered(self, paths: Sequence[Path]) -> list[Checkpoint]:
        return order_checkpoints(paths, {p: self.steps[p][1] for p in paths if p in self.steps})


def watch(sources: Sequence[str | Path], config: ProbeConfig, out: str | Path, *, poll_s: float = 10.0,
          timeout_s: float | None = None, gate: Gate | None = None, cache_mib: float = DEFAULT_CACHE_MIB,
          log: Log | None = None, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> Trajectory:
    """Probe what ``sources`` hold now and whatever appears there, until Ctrl-C or ``timeout_s``."""
    log = log if log is not None else (_stderr if config.options.progress else (lambda _: None))
    tracker = Tracker(config, out, cache_mib=cache_mib, log=log)
    state = _Watched()
    start = clock()
    log(f"watching {', '.join(map(str, sources))} every {poll_s:g} s"
        + (f" for {timeout_s:g} s" if timeout_s is not None else "") + " (Ctrl-C stops)")
    try:
        while True:
            if _poll(sources, tracker, state, out, gate):
                _write(tracker, state, out, gate)
            if timeout_s is not None and clock() - start + poll_s > timeout_s:
                break
            sleep(poll_s)
    except KeyboardInterrupt:
        log("stopped (Ctrl-C)")
    return _write(tracker, state, out, gate)


def _poll(sources: Sequence[str | Path], tracker: Tracker, state: _Watched, out: str | Path, gate: Gate | None) -> bool:
    """One look at the sources; probe what is complete. True when a checkpoint was added."""
    added = False
    paths = expand_sources(sources, allow_empty=True)
    for path in paths:
        sig = signature(path)
        before = state.signatures.get(path)
        state.signatures[path] = sig
        done = state.entries.get(path)
        if not sig or (done is not None and done[0] == sig):
            continue  # gone, or already probed as it is now
        stable = before == sig
        if path.is_dir() and not stable:
            continue
        state.steps_of(path, sig)
        checkpoint = next(c for c in state.ordered([*[p for p in state.entries if p in paths], path])
                          if c.path == path)
        entry = tracker.visit(checkpoint)
        if entry.status == "failed" and not stable:
            tracker.seen.pop(entry.sha256 or "", None)
            continue  # still being written, perhaps: tried again once it stops changing
        state.entries[path] = (sig, entry)
        tracker.log(progress_line(entry, len(state.entries), len(paths)))
        added = True
    return added


def _write(tracker: Tracker, state: _Watched, out: str | Path, gate: Gate | None) -> Trajectory:
    """The trajectory of everything probed so far, in step order, written to ``out``."""
    paths = list(state.entries)
    steps = {c.path: c for c in state.ordered(paths)}
    entries = []
    for path in sorted(paths, key=lambda p: (steps[p].step, p.name)):
        entry = state.entries[path][1]
        entry.checkpoint = steps[path]  # one step key for all, now that more checkpoints are known
        entries.append(entry)
    trajectory = tracker.trajectory(entries, gate)
    write_trajectory(trajectory, out)
    return trajectory
