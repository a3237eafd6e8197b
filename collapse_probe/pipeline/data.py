"""Data for the pipeline: how ``--data`` becomes batches for the loaded models, the same for every
command (``spectrum``, ``compare``, ``check``, ``lidar``, ``eval``): a folder's own image processor,
the checkpoint's training size, and the image-size check, applied once here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from collapse_probe.models.loading import LoadedEncoder, LoadReport

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
    labels: bool = False  # (images, labels) batches: class sub-folders or a built-in set's labels


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
    if d.labels and is_text_data(d.data):
        raise CollapseProbeError(f"--data {d.data}: per-class statistics need labelled images (class sub-folders or "
                                 "builtin: data); text files carry no labels")
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
        images = open_images(d.data, transform=ProcessorTransform(processor), batch_size=d.batch_size, labels=d.labels,
                             workers=d.workers, max_samples=d.max_samples, strict=d.strict, device=device)
        return images, {"data": str(d.data), "n_images": images.n_images, "n_unreadable_skipped": images.n_skipped,
                        "image_size": processor_size(processor), "resize": None,
                        "preprocessing": f"{PROCESSOR_CONFIG}: {describe_processor(processor)}"}
    d = replace(d, image_size=checked_image_size(paths, loaded, d))
    if processor is not None:
        mean, std = processor_pixel_stats(processor)
        transform = eval_transform(d.image_size, d.resize, mean=mean, std=std)
    images = open_images(d.data, image_size=d.image_size, resize=d.resize, batch_size=d.batch_size, labels=d.labels,
                         workers=d.workers, max_samples=d.max_samples, strict=d.strict, device=device,
                         transform=transform)
    resize = d.resize or default_resize(d.image_size)
    source = {"data": str(d.data), "n_images": images.n_images, "n_unreadable_skipped": images.n_skipped,
              **({"classes": images.classes} if d.labels else {}),
              "image_size": d.image_size, "resize": resize}
    if processor is not None:
        source["preprocessing"] = (f"the evaluation transform (bilinear resize of the shorter side to {resize}, centre "
                                   f"crop {d.image_size}), then the rescale and normalisation of {PROCESSOR_CONFIG} "
                                   f"({type(processor).__name__}'s own resize and crop not used)")
    return images, source




def checked_image_size(paths: Sequence[str | Path], loaded: Sequence[LoadedEncoder], d: DataConfig) -> int:
    """The image side to use: ``d.image_size``, else the one training crop size the checkpoints
    record, else 224; refused in one line (naming ``--image-size``) when a model needs another."""
    size = d.image_size
    if size is None:
        trained_sizes = {item.image_size for item in loaded if item.image_size}
        size = trained_sizes.pop() if len(trained_sizes) == 1 else DEFAULT_IMAGE_SIZE
    for path, item in zip(paths, loaded, strict=True):
        check_image_size(item.model, size, f"{Path(path).name}: this model")
    return size


def open_view_data(path: str | Path, loaded: LoadedEncoder, d: DataConfig, *, views: int, seed: int
                   ) -> tuple[Any, dict[str, Any]]:
    """Batches of (B, q, 3, S, S) seeded augmented views of ``d.data`` for one model (LiDAR), and
    what to record of them: the same size rules, image-size check and a Hugging Face folder's own
    rescale and normalisation as :func:`open_data`; the augmentation replaces the processor's
    resize and crop. Text data and text-only models are refused in one line."""
    from collapse_probe.data.views import open_views

    if is_text_data(d.data):
        raise CollapseProbeError(f"--data {d.data} is text: LiDAR's views are image augmentations; give images")
    if loaded.tokenizer is not None and loaded.image_processor is None:
        raise CollapseProbeError(f"{path} is a text model (a tokenizer, no image processor): LiDAR needs images")
    if d.resize is not None:
        raise CollapseProbeError("--resize has no meaning for LiDAR: its views are random resized crops at "
                                 "--image-size; drop --resize")
    processor = loaded.image_processor
    if d.image_size is None and processor is not None and processor_size(processor):
        d = replace(d, image_size=processor_size(processor))
    size = checked_image_size([path], [loaded], d)
    mean, std = processor_pixel_stats(processor) if processor is not None else (None, None)
    loader = open_views(d.data, views=views, image_size=size, batch_size=d.batch_size, workers=d.workers,
                        max_samples=d.max_samples, strict=d.strict, seed=seed, mean=mean, std=std)
    source = {"data": str(d.data), "n_images": loader.n_images, "n_unreadable_skipped": loader.n_skipped,
              "image_size": size, "views": views, "seed": seed,
              "augmentation": "the paper's view transforms, alternating view 1 / view 2, seeded per image"}
    if processor is not None:
        source["preprocessing"] = (f"the paper's view augmentations at {size} px, then the rescale and normalisation "
                                   f"of {PROCESSOR_CONFIG} ({type(processor).__name__}'s own resize and crop not used)")
    return loader, source
