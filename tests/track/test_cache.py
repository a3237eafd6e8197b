"""One decode for all checkpoints: K checkpoints cost one pass over the images (plus a few images
to check the cached inputs against spectrum's), in memory or, over the budget, in one file."""

from __future__ import annotations

import pytest

from collapse_probe.pipeline import _track_cache
from collapse_probe.pipeline.checkpoints import DataConfig, ProbeConfig
from collapse_probe.pipeline.track import track
from collapse_probe.probe.options import ProbeOptions

from .conftest import write_checkpoint


@pytest.fixture
def decoded(monkeypatch):
    """Counts the images each decode pass of the cache and each spectrum-loader check reads."""
    counts = {"cache": 0, "check": 0}
    real_open_images, real_open_data = _track_cache.open_images, _track_cache.open_data

    def counting(kind, loader):
        class Counted:
            def __init__(self):
                self.__dict__.update(loader=loader)

            def __getattr__(self, name):
                return getattr(loader, name)

            def __iter__(self):
                for batch in loader:
                    counts[kind] += len(batch)
                    yield batch
        return Counted()

    monkeypatch.setattr(_track_cache, "open_images", lambda *a, **k: counting("cache", real_open_images(*a, **k)))

    def open_data(*args, **kwargs):
        loader, source = real_open_data(*args, **kwargs)
        return counting("check", loader), source

    monkeypatch.setattr(_track_cache, "open_data", open_data)
    return counts


def _config(folder) -> ProbeConfig:
    return ProbeConfig(DataConfig(str(folder), workers=0, batch_size=8), ProbeOptions(progress=False))


@pytest.mark.parametrize("k", [1, 4])
def test_k_checkpoints_decode_the_images_once(tmp_path, image_folder, decoded, k):
    for epoch in range(1, k + 1):
        write_checkpoint(tmp_path / "ck" / f"e{epoch}.pt", seed=epoch, epoch=epoch, step=epoch)
    trajectory = track([tmp_path / "ck"], _config(image_folder), out=tmp_path / "out")
    assert len(trajectory.probed) == k
    # 22 readable images once; the first 4 files (one corrupt) checked against spectrum's loader once, whatever k is
    assert decoded == {"cache": 22, "check": 3}
    assert trajectory.settings["decoded images kept in"] == "memory"


def test_over_the_memory_budget_the_images_go_to_one_file_reused_by_the_next_run(run_dir, tmp_path, image_folder,
                                                                                 decoded):
    out = tmp_path / "out"
    in_memory = track([run_dir], _config(image_folder), out=tmp_path / "memory")
    on_disk = track([run_dir], _config(image_folder), out=out, cache_mib=0)
    files = list((out / "track").glob("images-*.u8"))
    assert len(files) == 1 and files[0].stat().st_size > 22 * 3 * 16 * 16  # 22 crops of 16 x 16, and its header
    assert on_disk.settings["decoded images kept in"] == str(files[0])
    for a, b in zip(in_memory.checkpoints, on_disk.checkpoints, strict=True):
        for layer, s in a.result.spectra.items():
            assert bool((s.eigenvalues == b.result.spectra[layer].eigenvalues).all())
    decoded["cache"] = 0
    write_checkpoint(run_dir / "epoch_0004.pt", seed=4, epoch=4, step=40)
    lines = []
    again = track([run_dir], _config(image_folder), out=out, cache_mib=0, log=lines.append)
    assert again.probed == [run_dir / "epoch_0004.pt"] and decoded["cache"] == 0  # not decoded again
    assert any(line.startswith("images: reusing") for line in lines)
    assert again.timings["decode_s"] == 0.0


def test_a_damaged_cache_file_is_decoded_again(run_dir, tmp_path, image_folder):
    out = tmp_path / "out"
    track([run_dir / "epoch_0001.pt"], _config(image_folder), out=out, cache_mib=0)
    file = next((out / "track").glob("images-*.u8"))
    file.write_bytes(file.read_bytes()[:-3])
    assert _track_cache.read_cache_file(file, file.stem.removeprefix("images-")) is None
    lines = []
    track([run_dir / "epoch_0002.pt"], _config(image_folder), out=out, cache_mib=0, log=lines.append)
    assert any("decoded once into" in line for line in lines)


def test_the_timings_split_decode_and_forward(run_dir, tmp_path):
    config = ProbeConfig(DataConfig("builtin:digits", workers=0, max_samples=64), ProbeOptions(progress=False))
    t = track([run_dir], config, out=tmp_path / "out").timings
    assert t["n_probed"] == 3 and t["decode_s"] > 0 and t["forward_s"] > 0
