"""One resolve_device and one is_main_process for the whole package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import collapse_probe
from collapse_probe._utils.devices import resolve_device
from collapse_probe._utils.ranks import is_distributed, is_main_process, rank, world_size
from collapse_probe.errors import CollapseProbeError


def test_resolve_device_rules():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(model=nn.Linear(2, 2)) == torch.device("cpu")  # where the model is
    assert resolve_device(model=nn.ReLU()) == torch.device("cpu")  # no parameters: CPU
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(CollapseProbeError, match="use auto, cpu, cuda"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CollapseProbeError, match="CUDA is not available"):
            resolve_device("cuda", model=nn.Linear(2, 2))


def test_single_process_is_rank_0_of_1():
    assert not is_distributed() and rank() == 0 and world_size() == 1 and is_main_process()


def test_each_helper_is_defined_once_in_the_package():
    package = Path(collapse_probe.__file__).parent
    sources = {p: p.read_text() for p in package.rglob("*.py")}
    for pattern in (r"def resolve_device\(", r"def _?is_main_process\(", r"def _?is_distributed\("):
        defined = [p.relative_to(package).as_posix() for p, text in sources.items() if re.search(pattern, text)]
        assert len(defined) == 1, (pattern, defined)
