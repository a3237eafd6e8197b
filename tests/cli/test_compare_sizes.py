"""`compare` of checkpoints trained at different sizes probes each at its own size (issue 17
item 7), records it in compare.json, and gives the numbers `spectrum` gives each alone."""

from __future__ import annotations

import json

import numpy as np

from collapse_probe.ssl import preset_config, train


def _run(root, size):
    config = preset_config("demo", epochs=1, max_steps_per_epoch=1, width=4, batch_size=32, projector_dim=8,
                           image_size=size, monitor_every=0, threads=1, out=str(root / f"run{size}"))
    return train(config).checkpoint_path


def test_each_checkpoint_at_its_own_size(tmp_path, invoke):
    a, b = _run(tmp_path, 32), _run(tmp_path, 16)
    common = ["--data", "builtin:digits", "--workers", "0", "--quiet", "--max-samples", "40"]
    code, _, err = invoke(["compare", a, b, *common, "--out", tmp_path / "cmp"])
    assert code == 0, err
    document = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    sizes = {name: source["image_size"] for name, source in document["source"]["checkpoints"].items()}
    assert sorted(sizes.values()) == [16, 32]
    for path, size in ((a, 32), (b, 16)):
        code, _, err = invoke(["spectrum", path, *common, "--out", tmp_path / f"s{size}"])
        alone = json.loads((tmp_path / f"s{size}" / "spectrum.json").read_text())
        assert alone["source"]["image_size"] == size
        for layer, entry in alone["layers"].items():
            compared = [v for k, v in document["layers"].items() if k.endswith(f":{layer}")
                        and v["n_samples"] == entry["n_samples"] and len(v["eigenvalues"]) == len(entry["eigenvalues"])
                        and np.allclose(v["eigenvalues"], entry["eigenvalues"], rtol=0,
                                        atol=1e-9 * entry["eigenvalues"][0])]
            assert compared, (size, layer)
