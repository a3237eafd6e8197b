"""Stage 1, load: a checkpoint file or folder -> ``nn.Module``, behind one public door.

:func:`load_encoder` and :func:`load_encoder_with_report` (in :mod:`.loading`) are the door; the
private helpers behind it are the architecture registry (``_registry``), key maps
(``_keymaps``), architecture detection (``_detect``) and Hugging Face folders (:mod:`.hf`).
"""

from collapse_probe.models.loading import (
    LoadedEncoder,
    LoadReport,
    load_encoder,
    load_encoder_with_report,
)

__all__ = ["LoadReport", "LoadedEncoder", "load_encoder", "load_encoder_with_report"]
