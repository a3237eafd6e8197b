"""``track`` gives every checkpoint the numbers ``spectrum`` gives it: the same sample, the same
inputs bit for bit (decoded once), the same batches (so the same jackknife groups)."""

from __future__ import annotations

import json

import pytest
import torch

from collapse_probe.pipeline.checkpoints import DataConfig, ProbeConfig, probe_checkpoint
from collapse_probe.pipeline.track import track
from collapse_probe.probe.options import ProbeOptions

from .conftest import FAST


def _config(data: str, **data_options) -> ProbeConfig:
    groups = data_options.pop("groups", None)
    return ProbeConfig(DataConfig(data, workers=0, **data_options), ProbeOptions(groups=groups, progress=False))


def _assert_same(tracked, reference) -> None:
    assert list(tracked.spectra) == list(reference.spectra)
    for layer, ref in reference.spectra.items():
        ours = tracked.spectra[layer]
        top = float(ref.eigenvalues.max())
        assert ours.n_samples == ref.n_samples
        assert float((ours.eigenvalues - ref.eigenvalues).abs().max()) <= 1e-9 * top, layer
        assert ours.stderr.keys() == ref.stderr.keys()
        for name, se in ref.stderr.items():
            assert ours.stderr[name] == pytest.approx(se, rel=1e-9, abs=1e-12), (layer, name)


@pytest.mark.parametrize("data_options", [dict(max_samples=150, batch_size=32, groups=3), dict(batch_size=64)])
def test_builtin_data_every_checkpoint_equals_spectrum(run_dir, tmp_path, data_options):
    config = _config("builtin:digits", **data_options)
    trajectory = track([run_dir], config, out=tmp_path / "out")
    assert [c.status for c in trajectory.checkpoints] == ["probed"] * 3
    for entry in trajectory.checkpoints:
        _assert_same(entry.result, probe_checkpoint(entry.path, config))


def test_image_folder_with_an_unreadable_image_equals_spectrum(run_dir, image_folder, tmp_path):
    # batch 4: the corrupt file drops out of its batch in both, so the 3 groups see the same rows
    config = _config(str(image_folder), batch_size=4, groups=3)
    trajectory = track([run_dir], config, out=tmp_path / "out")
    for entry in trajectory.checkpoints:
        reference = probe_checkpoint(entry.path, config)
        _assert_same(entry.result, reference)
        assert entry.result.source["n_unreadable_skipped"] == reference.source["n_unreadable_skipped"] == 1
        assert entry.result.source == reference.source


def test_an_explicit_image_size_and_resize_equal_spectrum(run_dir, image_folder, tmp_path):
    config = _config(str(image_folder), image_size=16, resize=20)
    entry = track([run_dir / "epoch_0002.pt"], config, out=None).checkpoints[0]
    _assert_same(entry.result, probe_checkpoint(entry.path, config))


def test_the_cli_writes_the_numbers_spectrum_writes(invoke, run_dir, image_folder, tmp_path):
    code, out, err = invoke(["track", run_dir, "--data", image_folder, *FAST, "--out", tmp_path / "t", "--json"])
    assert code == 0, err
    document = json.loads(out)
    assert [c["step"] for c in document["checkpoints"]] == [10, 20, 30]
    for checkpoint in document["checkpoints"]:
        code, spectrum_out, err = invoke(["spectrum", checkpoint["path"], "--data", image_folder, *FAST, "--json", "-q"])
        assert code == 0, err
        expected = json.loads(spectrum_out)["metrics"]
        rows = {r["layer"]: r for r in document["rows"] if r["checkpoint"] == checkpoint["path"]}
        for layer, metrics in expected.items():
            for name in ("effective_rank", "rankme", "stable_rank", "collapsed_dims", "n_samples"):
                assert rows[layer][name] == pytest.approx(metrics[name], rel=1e-12), (layer, name)


def _vit_folder(transformers, root, seed: int, processor: bool = True):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                                    image_size=16, patch_size=8)
    transformers.ViTModel(config).save_pretrained(root)
    if processor:
        transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                                       image_std=[0.2, 0.3, 0.25]).save_pretrained(root)
    (root / "trainer_state.json").write_text(json.dumps({"global_step": seed * 100, "epoch": float(seed)}))
    return root


def test_hugging_face_checkpoint_folders_use_their_processor_and_equal_spectrum(image_folder, tmp_path):
    """Trainer-style checkpoint-N/ folders: the processor's resize runs once, its normalisation per folder."""
    transformers = pytest.importorskip("transformers")
    folders = [_vit_folder(transformers, tmp_path / "hf" / f"checkpoint-{seed * 100}", seed) for seed in (2, 1)]
    config = _config(str(image_folder), batch_size=5)
    trajectory = track([tmp_path / "hf"], config, out=tmp_path / "out")
    assert [c.path for c in trajectory.checkpoints] == folders[::-1]  # by global_step
    assert trajectory.checkpoints[0].checkpoint.origin == "global_step in the folder"
    for entry in trajectory.checkpoints:
        assert entry.cached_input is True  # inputs from the one decode, not decoded again
        _assert_same(entry.result, probe_checkpoint(entry.path, config))


def test_per_class_statistics_decode_per_checkpoint_and_equal_spectrum(run_dir, tmp_path):
    """Labelled batches are not cached: each checkpoint is probed exactly as spectrum --per-class."""
    config = ProbeConfig(DataConfig("builtin:digits", workers=0, max_samples=120, labels=True),
                         ProbeOptions(per_class=True, progress=False))
    trajectory = track([run_dir], config, out=tmp_path / "out")
    for entry in trajectory.checkpoints:
        assert entry.cached_input is False
        reference = probe_checkpoint(entry.path, config)
        _assert_same(entry.result, reference)
        assert set(entry.result.classes) == set(reference.classes) == {"backbone", "projector"}
    stored = json.loads(next((tmp_path / "out" / "track" / "results").glob("*.json")).read_text())
    assert set(stored["spectra"]["classes"]) == {"backbone", "projector"}  # kept with the result
