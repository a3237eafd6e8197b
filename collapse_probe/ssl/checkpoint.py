"""The trainer's checkpoint: one ``torch.save``d dict that ``torch.load(weights_only=True)`` reads.

Keys (format ``collapse-probe/trainer-v1``)::

    format      "collapse-probe/trainer-v1"
    arch        {"backbone", "small_stem", "width", "projector", "projector_dims", "method", "d0", "rep_dim"}
    config      TrainConfig as a plain dict
    model       SSLModel state_dict (keys "backbone.*", "projector.*")
    online_head state_dict of the online linear classifier (or None)
    optimizer, scheduler, scaler   their state_dicts
    epoch       completed epochs
    step        optimiser steps taken (epoch x steps per epoch)
    rng         {"torch", "cuda", "python", "numpy"}: generator states as tensors

Only tensors, dicts, lists and plain scalars are stored (no numpy arrays, no dataclasses), and
writes are atomic (a temp file in the same folder, then ``os.replace``), so a run killed while
saving leaves the previous checkpoint intact. With ``save_every`` the run also keeps its history,
``OUT/checkpoints/epoch_NNNN.pt`` (:func:`keep_history`), what ``collapse-probe track`` reads.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.ssl.model import SSLModel, build_model_from_arch

FORMAT = "collapse-probe/trainer-v1"
CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_DIR = "checkpoints"


def rng_state() -> dict[str, Any]:
    """Every random generator the trainer touches, as tensors and plain scalars."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically to ``path`` (temp file, then ``os.replace``)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def history_path(out: str | os.PathLike, epoch: int) -> str:
    """``OUT/checkpoints/epoch_NNNN.pt``, the kept checkpoint after ``epoch`` completed epochs."""
    return os.path.join(os.fspath(out), HISTORY_DIR, f"epoch_{epoch:04d}.pt")


def keep_history(latest: str | os.PathLike, out: str | os.PathLike, epoch: int) -> str:
    """Keep the just-saved ``latest`` checkpoint as :func:`history_path` (a hard link where the file
    system allows, else a copy; atomic either way: the name appears only once complete)."""
    import shutil

    target = history_path(out, epoch)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        os.link(latest, tmp)  # checkpoint.pt is replaced, never rewritten in place: the link keeps this epoch
    except OSError:
        shutil.copyfile(latest, tmp)
    os.replace(tmp, target)
    return target


def history(out: str | os.PathLike) -> dict[int, str]:
    """epoch -> path of every kept ``OUT/checkpoints/epoch_NNNN.pt``."""
    folder = os.path.join(os.fspath(out), HISTORY_DIR)
    if not os.path.isdir(folder):
        return {}
    found = {}
    for name in os.listdir(folder):
        stem, _, suffix = name.partition(".")
        if suffix == "pt" and stem.startswith("epoch_") and stem[6:].isdigit():
            found[int(stem[6:])] = os.path.join(folder, name)
    return dict(sorted(found.items()))


def latest_checkpoint(out: str | os.PathLike) -> str | None:
    """The checkpoint ``--resume`` continues: ``OUT/checkpoint.pt``, or the kept one of a later
    epoch when there is one (a run killed between the two saves), or the latest kept one when
    ``checkpoint.pt`` is gone; None when the run has none."""
    latest = os.path.join(os.fspath(out), CHECKPOINT_NAME)
    kept = history(out)
    if not os.path.isfile(latest):
        return next(reversed(kept.values()), None) if kept else None
    if kept and max(kept) > int(torch.load(latest, map_location="cpu", weights_only=True, mmap=True)["epoch"]):
        return kept[max(kept)]
    return latest


def check_run_folder(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run in a folder that already holds something, unless told to.

    ``out`` missing or empty: fine. Not empty: fine with ``resume`` (continue the run there) or
    ``overwrite`` (a fresh run replaces the trainer's files); otherwise a one-line
    :class:`CollapseProbeError` naming what is there, before anything is read or written.
    """
    if resume and overwrite:
        raise CollapseProbeError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    folder = os.fspath(out)
    if resume or overwrite or not os.path.isdir(folder):
        return
    entries = sorted(os.listdir(folder))
    if entries:
        shown = ", ".join(entries[:4]) + (f", ... ({len(entries)} entries)" if len(entries) > 4 else "")
        raise CollapseProbeError(
            f"--out {folder} is not empty ({shown}): continue that run with --resume, replace it with "
            "--overwrite, or give another --out")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a trainer checkpoint safely (``weights_only=True``) on the CPU and check its format."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CollapseProbeError(f"no checkpoint at {path!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CollapseProbeError(f"{path!r} is not a collapse-probe trainer checkpoint (format {FORMAT})")
    return ckpt


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> SSLModel:
    """Rebuild the :class:`SSLModel` a trainer checkpoint describes and load its weights (strict).

    >>> from collapse_probe.ssl.config import TrainConfig
    >>> from collapse_probe.ssl.model import build_model
    >>> model, arch = build_model(TrainConfig(arch="smallcnn", width=8, projector="linear", projector_dim=4))
    >>> clone = build_model_from_checkpoint({"format": FORMAT, "arch": arch, "model": model.state_dict()})
    >>> bool(torch.equal(clone.projector.weight, model.projector.weight))
    True
    """
    if ckpt.get("format") != FORMAT or "arch" not in ckpt or "model" not in ckpt:
        raise CollapseProbeError(f"not a collapse-probe trainer checkpoint (format {FORMAT}, keys arch and model)")
    model = build_model_from_arch(ckpt["arch"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model
