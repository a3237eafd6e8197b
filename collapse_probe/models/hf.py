"""Hugging Face ``save_pretrained`` folders (``config.json`` + weights) as encoders ready to probe.

A folder is read with transformers' Auto classes from that folder only: ``local_files_only=True``
and ``HF_HUB_OFFLINE=1`` while loading, so nothing is ever fetched. Code shipped in the folder is
never run: a ``config.json`` (or tokenizer / image-processor config) whose ``auto_map`` names
custom modeling code is refused unless ``trust_checkpoint=True`` (the CLI's
``--trust-checkpoint``, the flag that also guards unpickling), which passes
``trust_remote_code=True``. Weights come from ``.safetensors`` when the folder has one.

The model is ``AutoModel`` (the bare encoder: heads such as ``cls.*`` of a masked-LM checkpoint
are dropped and listed). ViT-MAE is loaded with ``mask_ratio=0``: every patch is kept (in a
random order, which mean pooling does not see), so the probe is deterministic. What is probed by
default is the model output's ``last_hidden_state``, averaged over tokens (over the real tokens,
by the attention mask, for text).

The folder's ``preprocessor_config.json`` (``AutoImageProcessor``) preprocesses images exactly as
it says (resize, crop, rescale, normalise); with an explicit image size the pipeline resizes and
crops by its own evaluation transform instead and keeps only the processor's rescale and
normalisation (:func:`processor_pixel_stats`). Its tokenizer (``AutoTokenizer``) turns text into
batches. transformers is an optional dependency: ``pip install "collapse-probe[hf]"``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from collapse_probe.errors import CollapseProbeError

CONFIG = "config.json"
PROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
#: Missing keys under these names are not on the probed path (the pooler feeds ``pooler_output``).
HARMLESS_MISSING_PREFIXES = ("pooler.",)
#: The load report's note on the image processor starts so; the pipeline rewrites the rest to say
#: what preprocessed the images in the end.
PROCESSOR_NOTE = "images preprocessed by "
INSTALL_HINT = 'pip install "collapse-probe[hf]"'


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding ``config.json`` (what ``save_pretrained`` writes).

    >>> is_hf_folder(".")
    False
    """
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file()


def import_transformers(path: str | os.PathLike) -> Any:
    """``transformers``, or a one-line :class:`CollapseProbeError` naming the extra to install."""
    try:
        with offline():
            import transformers
    except ImportError:
        raise CollapseProbeError(f"{path} is a Hugging Face folder: loading it needs transformers "
                                 f"({INSTALL_HINT})") from None
    return transformers


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration (restored afterwards), on top of ``local_files_only``."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CollapseProbeError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(value, dict):
        raise CollapseProbeError(f"{path}: not a JSON object")
    return value


def custom_code(folder: Path) -> list[str]:
    """``"file: auto_map entry"`` for every config in ``folder`` that names custom Python code."""
    found = []
    for name in (CONFIG, PROCESSOR_CONFIG, "tokenizer_config.json", "processor_config.json"):
        if (folder / name).is_file():
            auto_map = _read_json(folder / name).get("auto_map")
            if auto_map:
                entries = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
                found += [f"{name}: {entry}" for entry in entries]
    return found


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No "Loading weights" progress bars and no load-report warnings while loading (restored afterwards).

    What transformers would warn about (missing, unexpected, shape-mismatched tensors) is in our
    own report, refusal or :class:`~collapse_probe.models.loading.PartialLoadWarning`.
    """
    logging = transformers.utils.logging
    enabled, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if enabled:
            logging.enable_progress_bar()


def broadcast_pixel_stats(processor: Any, channels: int = 3) -> list[str]:
    """A scalar ``image_mean`` / ``image_std`` of ``processor`` becomes one value per channel, in place.

    ``preprocessor_config.json`` may hold ``"image_mean": 0.5``; transformers normalises with it
    as ``[0.5] * channels``, so the processor is given that list. Returns a note per value changed.

    >>> from types import SimpleNamespace as P
    >>> processor = P(image_mean=0.5, image_std=[0.2, 0.3, 0.4])
    >>> broadcast_pixel_stats(processor), processor.image_mean
    (['image_mean 0.5 of preprocessor_config.json applied to each of the 3 channels'], [0.5, 0.5, 0.5])
    """
    notes = []
    for name in ("image_mean", "image_std"):
        value = getattr(processor, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(processor, name, [float(value)] * channels)
            notes.append(f"{name} {value} of {PROCESSOR_CONFIG} applied to each of the {channels} channels")
    return notes


def processor_size(processor: Any) -> int | None:
    """The side of the square images an image processor produces (its crop, else its resize), or None."""
    def side(size: Any) -> int | None:
        if size is None:
            return None
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        height, width = get("height"), get("width")
        if height and height == width:
            return int(height)
        return None

    if getattr(processor, "do_center_crop", False):
        return side(getattr(processor, "crop_size", None))
    return side(getattr(processor, "size", None))


class ProcessorTransform:
    """PIL image -> ``(3, H, W)`` tensor by a Hugging Face image processor (picklable for workers)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def processor_pixel_stats(processor: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for ``ToTensor`` then ``Normalize`` that reproduce the processor's rescale
    and normalisation exactly.

    The processor maps an 8-bit pixel ``x`` to ``(x r - m) / s``: ``r`` its ``rescale_factor``
    (1 without ``do_rescale``), ``m, s`` its ``image_mean``/``image_std`` (0 and 1 without
    ``do_normalize``). ``ToTensor`` gives ``x / 255``, so ``Normalize(m / (255 r), s / (255 r))``
    gives the same value. Raises :class:`CollapseProbeError` for a processor that normalises
    without a mean and std (ImageGPT's, say): nothing to reproduce it with.

    >>> from types import SimpleNamespace as P
    >>> processor_pixel_stats(P(do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    ...                         image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]))
    ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    >>> processor_pixel_stats(P(do_rescale=True, rescale_factor=1 / 127.5, do_normalize=False))
    ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
    >>> processor_pixel_stats(P(do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=None))
    Traceback (most recent call last):
    ...
    collapse_probe.errors.CollapseProbeError: SimpleNamespace of preprocessor_config.json normalises without ...
    """
    scale = 255 * (float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else 1.0)
    if not getattr(processor, "do_normalize", False):
        return (0.0,) * 3, (1.0 / scale,) * 3
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        raise CollapseProbeError(f"{type(processor).__name__} of {PROCESSOR_CONFIG} normalises without an image_mean "
                                 "and image_std, which --image-size/--resize cannot reproduce: drop them to "
                                 "preprocess by the processor as it is")

    def per_channel(value: Any) -> tuple[float, ...]:
        return tuple(float(v) / scale for v in value) if isinstance(value, (list, tuple)) else (float(value) / scale,) * 3

    return per_channel(mean), per_channel(std)


def describe_processor(processor: Any) -> str:
    """``"ViTImageProcessor: resize {...}, crop ..., mean (...), std (...)"`` in one line."""
    parts = [type(processor).__name__ + ":"]
    if getattr(processor, "do_resize", False):
        size = getattr(processor, "size", None)
        shown = {k: v for k, v in dict(size).items() if v} if size is not None else size
        parts.append(f"resize {shown}")
    if getattr(processor, "do_center_crop", False):
        parts.append(f"centre crop {processor_size(processor)}")
    if getattr(processor, "do_normalize", False):
        parts.append(f"mean {tuple(round(m, 4) for m in processor.image_mean)}, "
                     f"std {tuple(round(s, 4) for s in processor.image_std)}")
    return " ".join(parts[:1]) + " " + ", ".join(parts[1:])


def load_hf_folder(path: str | os.PathLike, *, trust_checkpoint: bool = False,
                   allow_partial: bool = False) -> dict[str, Any]:
    """Load a ``save_pretrained`` folder: the :class:`~collapse_probe.models.loading.LoadedEncoder`
    fields ``model``, ``report`` (keyword arguments of ``LoadReport``), ``image_size``,
    ``image_processor`` and ``tokenizer`` (None when the folder has none).

    Raises :class:`CollapseProbeError` for custom code without ``trust_checkpoint``, for a missing
    transformers, and for weights that leave part of the model random (without ``allow_partial``).
    """
    folder = Path(path)
    shipped = custom_code(folder)
    if shipped and not trust_checkpoint:
        raise CollapseProbeError(f"{folder}: its config names custom code shipped with the model ({shipped[0]}): "
                                 "refusing to import it. Rerun with --trust-checkpoint (trust_checkpoint=True) "
                                 "only if you trust its source")
    config = _read_json(folder / CONFIG)
    transformers = import_transformers(folder)
    safetensors = sorted(p.name for p in folder.glob("*.safetensors"))
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": bool(shipped)}
    if safetensors:
        kwargs["use_safetensors"] = True
    notes = []
    if config.get("model_type") == "vit_mae":
        kwargs["mask_ratio"] = 0.0
        notes.append("ViT-MAE loaded with mask_ratio=0: every patch is encoded (no random masking)")
    with offline(), _quiet_transformers(transformers):
        try:  # shape mismatches are reported by us below, in one line, instead of raised
            model, info = transformers.AutoModel.from_pretrained(str(folder), output_loading_info=True,
                                                                 ignore_mismatched_sizes=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise CollapseProbeError(f"{folder}: transformers cannot load it ({_first_line(error)})") from None
        image_processor = tokenizer = None
        if (folder / PROCESSOR_CONFIG).is_file():
            image_processor = transformers.AutoImageProcessor.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=bool(shipped))
            notes += broadcast_pixel_stats(image_processor, int(config.get("num_channels", 3)))
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=bool(shipped))
    missing = tuple(sorted(info.get("missing_keys", ())))
    mismatched = _mismatched(model, info.get("mismatched_keys", ()))
    if mismatched and not allow_partial:
        name, in_file, wanted = mismatched[0]
        raise CollapseProbeError(
            f"{folder}: the weights do not fit {CONFIG}: {name} is {in_file} in the weights but the config makes it "
            f"{wanted} ({len(mismatched)} tensors differ in shape; a config.json of another model size?). Pass "
            "--allow-partial (allow_partial=True) to probe with those tensors random anyway")
    unexpected = tuple(sorted(info.get("unexpected_keys", ())))
    harmless = tuple(k for k in missing if k.startswith(HARMLESS_MISSING_PREFIXES))
    missing = tuple(k for k in missing if k not in harmless)
    mismatched_keys = tuple(f"{name} {in_file} vs {wanted}" for name, in_file, wanted in mismatched)
    random_parts = missing + mismatched_keys
    if random_parts and not allow_partial:
        raise CollapseProbeError(f"{folder}: {len(random_parts)} of {type(model).__name__}'s tensors are not in the "
                                 f"weights ({', '.join(random_parts[:3])}) and would stay random. Pass "
                                 "--allow-partial (allow_partial=True) to probe a partly random network anyway")
    n_expected = len(model.state_dict())
    notes.insert(0, "weights from " + (", ".join(safetensors) if safetensors else "the folder's PyTorch weights"))
    if harmless:
        notes.append(f"{len(harmless)} tensors not in the weights and not probed stay random ({', '.join(harmless)})")
    if shipped:
        notes.append(f"custom code imported (--trust-checkpoint): {shipped[0]}")
    if image_processor is not None:
        notes.append(f"{PROCESSOR_NOTE}{PROCESSOR_CONFIG}: {describe_processor(image_processor)}")
    if tokenizer is not None:
        notes.append(f"texts tokenised by {type(tokenizer).__name__} from the folder")
    report = {"kind": "Hugging Face folder", "arch": type(model).__name__, "arch_library": "transformers",
              "n_loaded": n_expected - len(missing) - len(harmless) - len(mismatched), "n_expected": n_expected,
              "missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched_keys,
              "unexpected_backbone_keys": (), "notes": tuple(notes)}
    return {"model": model, "report": report, "image_size": processor_size(image_processor) if image_processor else None,
            "image_processor": image_processor, "tokenizer": tokenizer}


def _mismatched(model: Any, found: Any) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """transformers' ``mismatched_keys`` as ``(name, shape in the weights, shape the config wants)``, in model order."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    order = {name: i for i, name in enumerate(shapes)}
    rows = []
    for entry in found:  # (key, shape in the file, shape of the model) in transformers 4.40 to 5.x
        name, in_file, wanted = entry if isinstance(entry, (tuple, list)) and len(entry) == 3 else (entry, (), None)
        rows.append((str(name), tuple(in_file), tuple(wanted) if wanted is not None else shapes.get(str(name), ())))
    return sorted(rows, key=lambda row: (order.get(row[0], len(order)), row[0]))


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
