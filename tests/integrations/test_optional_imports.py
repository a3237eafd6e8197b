"""The integrations stay optional: the package, the monitor and the adapters import none of them."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_trainer_or_tracker():
    code = (
        "import sys, collapse_probe, collapse_probe.integrations.monitor, collapse_probe.integrations, "
        "collapse_probe.integrations.loggers, collapse_probe.integrations.shard\n"
        "collapse_probe.spectrum\n"
        "heavy = ('lightning', 'pytorch_lightning', 'transformers', 'wandb', 'mlflow', 'tensorboard', 'accelerate')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
