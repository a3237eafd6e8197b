"""`--repeated-calls`: a layer run twice per forward is refused with exit 2, or one call is probed."""

from __future__ import annotations

import json
import textwrap

import torch

MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class TwoViews(nn.Module):
        """One shared block applied to an image and to its flip: `block` runs twice per forward."""

        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 12))

        def forward(self, x):
            return self.block(x) + self.block(torch.flip(x, dims=[3]))

    def make_model():
        torch.manual_seed(0)
        return TwoViews()
''')


def test_cli_refuses_then_probes_the_chosen_call(tmp_path, image_folder, invoke, image_args, monkeypatch):
    (tmp_path / "twoviews_model.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import twoviews_model

    torch.save(twoviews_model.make_model().state_dict(), tmp_path / "twoviews.pt")
    common = ["spectrum", tmp_path / "twoviews.pt", "--arch", "twoviews_model:make_model", "--data", image_folder,
              "--layer", "block", *image_args]
    code, _, stderr = invoke([*common, "--out", tmp_path / "refused"])
    assert code == 2
    assert "layer 'block' ran 2 times in one forward pass" in stderr and "--repeated-calls" in stderr
    assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = invoke([*common, "--out", tmp_path / "first", "--repeated-calls", "first"])
    assert code == 0, stderr
    document = json.loads((tmp_path / "first" / "spectrum.json").read_text())
    layer = document["layers"]["block"] if "layers" in document else document
    text = json.dumps(layer)
    assert '"calls_per_forward": 2' in text and '"call_used": "first"' in text
