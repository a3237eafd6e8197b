"""`--groups K` on the probe commands and `check --max-drop-sigma Z` (issue 11, part 5)."""

from __future__ import annotations

import json

import torch

from collapse_probe.metrics.grouped import GroupedAccumulator
from collapse_probe.pipeline.outputs import ProbeResult, write_outputs


def _saved_grouped(tmp_path, name, z, groups=8):
    acc = GroupedAccumulator(z.shape[1], groups=groups, layer="fc")
    for start in range(0, len(z), 50):
        acc.update(z[start : start + 50])
    s = acc.compute()
    return write_outputs(ProbeResult({"fc": s}, {"fc": "representation"}), tmp_path / name)["json"], s


def test_check_max_drop_sigma_on_saved_spectra(tmp_path, invoke):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    baseline, b = _saved_grouped(tmp_path, "base", z)
    same_model, s = _saved_grouped(tmp_path, "same", torch.randn(2000, 16, generator=g, dtype=torch.float64))
    worse, w = _saved_grouped(tmp_path, "worse", z * torch.linspace(1, 0.2, 16, dtype=torch.float64))
    # a fresh sample of the same model: within noise even against a 0% --max-drop
    code, stdout, _ = invoke(["check", same_model, "--baseline", baseline, "--max-drop", "0", "--max-drop-sigma", "4"])
    assert code == 0, stdout
    assert "+-" in stdout and "combined SE" in stdout
    code, stdout, _ = invoke(["check", worse, "--baseline", baseline, "--max-drop-sigma", "3"])
    assert code == 1 and "FAIL max-drop [fc]: effective_rank" in stdout
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({**json.loads(baseline.read_text()),
                                 "layers": {"fc": {**json.loads(baseline.read_text())["layers"]["fc"], "stderr": {}}}}))
    code, _, stderr = invoke(["check", worse, "--baseline", plain, "--max-drop-sigma", "3"])
    assert code == 2 and "--groups K" in stderr
    code, _, stderr = invoke(["check", worse, "--max-drop-sigma", "3"])
    assert code == 2


def test_spectrum_groups_prints_value_plus_minus_se(tmp_path, image_folder, invoke, image_args, resnet_state):
    checkpoint = tmp_path / "r.pt"
    torch.save(resnet_state, checkpoint)
    code, stdout, _ = invoke(["spectrum", checkpoint, "--arch", "resnet18", "--data", image_folder, "--groups", "2",
                              "--out", tmp_path / "out", *image_args[:-1]])
    assert code == 0, stdout
    assert "+-" in stdout.splitlines()[1]
    code, stdout, _ = invoke(["spectrum", checkpoint, "--arch", "resnet18", "--data", image_folder, "--groups", "2",
                              "--json", "--out", tmp_path / "out2", *image_args])
    document = json.loads(stdout)
    assert "effective_rank_se" in document["metrics"]["fc"] and document["layers"]["fc"]["stderr"]["rankme"] > 0
