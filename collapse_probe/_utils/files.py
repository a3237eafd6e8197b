"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never half of it.

Each write goes to a temporary file in the destination's own folder (so the rename never crosses
file systems), is flushed to disk, then renamed over the destination with ``os.replace``, which
POSIX and Windows both make atomic. On any error the temporary file is removed and the
destination is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block returns, it replaces ``path``.

    For writers that want a file name (``savefig``, ``to_csv``, ``torch.save``). The parent
    folder must exist. If the block raises, the temporary file is deleted and ``path`` untouched.
    The new file gets the permissions a plain ``open(path, "w")`` would give (0o666 & ~umask).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('hello', ['a.txt'])
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, "rb+") as handle:  # data on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "b.json"
    >>> atomic_write_text(target, "{}").read_text()
    '{}'
    """
    return atomic_write_bytes(path, text.encode(encoding))
