"""Text files as tokenizer batches: ``.txt`` (one text per line) or ``.jsonl`` (a ``text`` field).

Each batch is what the tokenizer returns for ``batch_size`` texts (``padding=True``,
``truncation=True`` at ``max_length``, ``return_tensors="pt"``): a dict holding ``input_ids`` and
``attention_mask``, which :func:`collapse_probe.spectrum` passes as ``model(**batch)`` and whose
mask pools the (B, T, D) token outputs over the real tokens only. Blank lines are skipped and
counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from collapse_probe.errors import CollapseProbeError

TEXT_SUFFIXES = (".txt", ".jsonl")


def is_text_data(data: str | Path) -> bool:
    """True for a ``.txt`` or ``.jsonl`` file (``--data`` given as text, not an image folder).

    >>> is_text_data("sentences.jsonl"), is_text_data("images/")
    (True, False)
    """
    return Path(data).suffix.lower() in TEXT_SUFFIXES and not Path(data).is_dir()


def read_texts(path: str | Path) -> tuple[list[str], int]:
    """``(texts, n_blank)``: the non-blank lines of a ``.txt``, or the ``text`` fields of a ``.jsonl``.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.jsonl")
    >>> _ = open(path, "w").write('{"text": "a cat"}\\n\\n{"text": "a dog", "id": 2}\\n')
    >>> read_texts(path)
    (['a cat', 'a dog'], 1)
    """
    path = Path(path)
    if not path.is_file():
        raise CollapseProbeError(f"--data {str(path)!r}: no such text file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CollapseProbeError(f"--data {path}: cannot read it as UTF-8 text ({error})") from None
    texts, blank = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            blank += 1
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                record = json.loads(line)
            except ValueError as error:
                raise CollapseProbeError(f"{path}:{number}: not a JSON line ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CollapseProbeError(f"{path}:{number}: no string field 'text' in this JSON line")
            line = record["text"]
        texts.append(line)
    if len(texts) < 2:
        raise CollapseProbeError(f"--data {path}: {len(texts)} text(s); a covariance needs at least 2")
    return texts, blank


def subset(texts: list[str], max_samples: int | None, seed: int = 0) -> list[str]:
    """A seeded uniform random subset of ``max_samples`` texts, in file order (as for images)."""
    if max_samples is None or max_samples >= len(texts):
        return texts
    keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values
    return [texts[i] for i in keep.tolist()]


def model_max_length(tokenizer: Any, model: Any = None) -> int | None:
    """The token limit: the tokenizer's ``model_max_length`` unless unset (a huge sentinel), capped
    by the model's ``max_position_embeddings``; None when neither says."""
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


class TextBatches:
    """Tokenizer dict batches of a list of texts; ``n_texts`` and ``n_skipped`` (blank lines)."""

    def __init__(self, texts: list[str], tokenizer: Any, *, batch_size: int, max_length: int | None,
                 n_skipped: int = 0):
        self.texts = texts
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.n_texts = len(texts)
        self.n_skipped = n_skipped

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self.texts), self.batch_size):
            chunk = self.texts[start:start + self.batch_size]
            yield dict(self.tokenizer(chunk, padding=True, truncation=self.max_length is not None,
                                      max_length=self.max_length, return_tensors="pt"))


def open_texts(data: str | Path, tokenizer: Any, *, batch_size: int = 64, max_samples: int | None = None,
               max_length: int | None = None) -> TextBatches:
    """Open a ``.txt``/``.jsonl`` file as tokenizer batches (module docstring)."""
    texts, blank = read_texts(data)
    return TextBatches(subset(texts, max_samples), tokenizer, batch_size=batch_size, max_length=max_length,
                       n_skipped=blank)
