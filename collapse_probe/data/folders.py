"""Finding the images of a folder: recursive, symlinked folders followed, loops cut, a seeded subset.

Folders are searched recursively (flat, or class sub-folders as ImageNet val; symlinked folders
are followed, as torchvision's ``ImageFolder`` does, and a symlink back to a folder above is not);
files with other extensions are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from collapse_probe.data.subset import seeded_subset
from collapse_probe.errors import CollapseProbeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root``, following symlinked folders (as torchvision's ``ImageFolder``),
    except a link to a folder already on the current path (a loop)."""

    def identity(path: str) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino

    def walk(folder: str, ancestors: frozenset[tuple[int, int]]) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # unreadable folder: nothing to list there
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks; a broken link is neither dir nor file
            except OSError:
                continue
            if is_dir:
                key = identity(entry.path)
                if key not in ancestors:
                    yield from walk(entry.path, ancestors | {key})
            else:
                yield Path(entry.path)

    yield from walk(str(root), frozenset({identity(str(root))}))


def list_images(root: str | Path, *, max_samples: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), or a seeded random subset of ``max_samples``.

    The subset is drawn uniformly (not the first files) by
    :func:`~collapse_probe.data.subset.seeded_subset`, so class sub-folders stay balanced.
    """
    root = Path(root)
    if not root.exists():
        raise CollapseProbeError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise CollapseProbeError(f"--data {str(root)!r} is not a folder (or builtin:NAME)")
    files = sorted(p for p in _walk_files(root) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise CollapseProbeError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}")
    keep = seeded_subset(len(files), max_samples, seed)
    return files if keep is None else [files[i] for i in keep]


def class_labels(root: str | Path, files: Sequence[Path]) -> tuple[list[int], list[str]]:
    """Each file's class, the first folder under ``root`` it sits in (an ImageFolder's layout):
    ``(labels, class names)``, the classes sorted by name. A file directly in ``root`` has no
    class: refused in one line.

    >>> class_labels("/d", [Path("/d/cat/1.jpg"), Path("/d/dog/a/2.png"), Path("/d/cat/3.jpg")])
    ([0, 1, 0], ['cat', 'dog'])
    """
    root = Path(root)
    names = []
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise CollapseProbeError(f"per-class statistics need class sub-folders under {str(root)!r}; "
                                     f"{path.name} sits directly in it")
        names.append(parts[0])
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    return [index[name] for name in names], classes
