"""Reading a checkpoint file safely (``weights_only``, never plain unpickling unless trusted)
and finding the state_dict inside its wrapper."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from collapse_probe.errors import CollapseProbeError
from collapse_probe.models._keymaps import (
    flatten_vissl,
)

TRAINER_FORMAT = "collapse-probe/trainer-v1"
#: Keys under which wrapped checkpoints keep their weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "model_state_dict", "backbone", "encoder", "net")

def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception message (user-facing errors are one line)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _refuse_unpickling(path: Path, error: Exception) -> CollapseProbeError:
    match = re.search(r"GLOBAL (\S+)", str(error))
    found = f" (it references {match.group(1)})" if match else ""
    return CollapseProbeError(
        f"{path}: refusing to unpickle arbitrary Python objects{found}: loading it could run code. "
        "Rerun with --trust-checkpoint (trust_checkpoint=True) only if you trust its source"
    )


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> tuple[str, Any]:
    """Read ``path`` without building anything: ``(kind, object)``.

    kind is ``torchscript`` (object: a ScriptModule), ``export`` (an ExportedProgram),
    ``safetensors`` (a dict of tensors) or ``torch`` (whatever ``torch.load`` returned).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    >>> read_checkpoint(path)
    ('torch', {'state_dict': {'w': tensor([1., 1.])}})
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CollapseProbeError(f"checkpoint {str(path)!r} is a folder, not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return "safetensors", load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - any parse failure is bad input
            raise CollapseProbeError(f"{path}: not a readable safetensors file ({_first_line(error)})") from error
    names = _zip_names(path)
    if any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in names):
        return "torchscript", torch.jit.load(str(path), map_location="cpu")
    if path.suffix == ".pt2" or any(n.count("/") == 1 and n.endswith("/archive_format") for n in names):
        try:
            return "export", torch.export.load(str(path))
        except Exception as error:  # noqa: BLE001
            raise CollapseProbeError(f"{path}: not a readable torch.export program ({_first_line(error)})") from error
    try:
        return "torch", torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CollapseProbeError(f"{path}: not a PyTorch checkpoint ({str(error).splitlines()[0]})") from error
        if not trust_checkpoint:
            raise _refuse_unpickling(path, error) from None
    except Exception as error:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise CollapseProbeError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {_first_line(error)})") from error
    return "torch", torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- state dicts


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def find_state_dict(obj: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """Find the weights in a (possibly wrapped) checkpoint: ``(where, state_dict)``.

    ``where`` is the path of wrapper keys, e.g. ``"state_dict"`` or ``"teacher"`` ("" when bare).

    >>> find_state_dict({"epoch": 3, "state_dict": {"backbone.w": torch.zeros(1)}})
    ('state_dict', {'backbone.w': tensor([0.])})
    """
    if _is_state_dict(obj):
        return "", dict(obj)
    vissl = flatten_vissl(obj)
    if vissl is not None:
        return vissl
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                try:
                    where, state = find_state_dict(obj[key])
                except CollapseProbeError:
                    continue
                return ".".join(p for p in (key, where) if p), state
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return "", tensors
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CollapseProbeError(f"found no weights in the checkpoint (top-level keys: {keys})")
    raise CollapseProbeError(f"the checkpoint holds a {type(obj).__name__}, not a state_dict or a model")
