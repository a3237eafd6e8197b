"""Exceptions that carry a one-line, user-facing message."""

from __future__ import annotations


class CollapseProbeError(Exception):
    """Bad input to collapse-probe: the message is one line and says what to do."""


class NonFiniteEmbeddingError(CollapseProbeError):
    """An embedding contained NaN or Inf; the message names the layer and the first batch."""
