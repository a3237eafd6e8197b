"""`collapse-probe spectrum` and `layers`: every checkpoint format, the files, the numbers, the errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from collapse_probe import spectrum
from collapse_probe.data.images import open_images
from collapse_probe.models.loading import load_encoder
from collapse_probe.pipeline.outputs import load_spectra


def _library_fc_spectrum(checkpoint, folder):
    """The same probe by direct library calls (no CLI code involved)."""
    model = load_encoder(checkpoint, "resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = open_images(folder, image_size=32, resize=36, batch_size=4)
        return spectrum(model, loader, layers="fc", progress=False)


def test_spectrum_writes_files_and_matches_the_library(tmp_path, checkpoints, image_folder, invoke, image_args):
    out = tmp_path / "out"
    code, stdout, _ = invoke(["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", image_folder,
                              "--out", out, *image_args[:-1]])
    assert code == 0
    header, row = stdout.strip().splitlines()
    assert header.split()[:4] == ["layer", "role", "dim", "N"]
    assert row.split()[:4] == ["fc", "representation", "512", "9"]
    assert {p.name for p in out.iterdir()} == {"spectrum.json", "spectrum.csv", "spectrum.png"}
    saved = load_spectra(out / "spectrum.json")
    assert saved.source["n_unreadable_skipped"] == 1 and saved.source["n_images"] == 10
    reference = _library_fc_spectrum(checkpoints["pt"], image_folder)
    assert torch.equal(saved.spectra["fc"].eigenvalues, reference.eigenvalues)
    assert saved.spectra["fc"].effective_rank == reference.effective_rank
    assert f"{reference.effective_rank:.2f}" in row


@pytest.mark.parametrize("fmt", ["safetensors", "lightning", "directclr", "torchscript", "export"])
def test_every_format_gives_the_same_spectrum(tmp_path, checkpoints, image_folder, fmt, invoke, image_args):
    arch = [] if fmt in ("torchscript", "export") else ["--arch", "resnet18"]
    code, stdout, stderr = invoke(["spectrum", checkpoints[fmt], *arch, "--data", image_folder, "--json",
                                   "--out", tmp_path, *image_args])
    assert code == 0, stderr
    document = json.loads(stdout)
    (layer,) = document["layers"]
    assert layer == ("output" if not arch else "fc")
    values = torch.tensor(document["layers"][layer]["eigenvalues"], dtype=torch.float64)
    reference = _library_fc_spectrum(checkpoints["pt"], image_folder).eigenvalues
    torch.testing.assert_close(values, reference, rtol=1e-4, atol=1e-9 * float(reference[0]))


def test_layer_option_and_normalize(tmp_path, checkpoints, image_folder, invoke, image_args):
    code, stdout, _ = invoke(["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", image_folder,
                              "--layer", "layer3", "--layer", "fc", "--normalize", "--json", "--out", tmp_path,
                              *image_args])
    assert code == 0
    document = json.loads(stdout)
    assert list(document["layers"]) == ["layer3", "fc"]
    assert document["layers"]["layer3"]["dim"] == 256
    assert document["layers"]["fc"]["conventions"]["normalize"] is True


def test_trainer_checkpoint_probes_representation_and_projector(tmp_path, image_folder, invoke, image_args):
    from collapse_probe.ssl.checkpoint import FORMAT
    from collapse_probe.ssl.config import TrainConfig
    from collapse_probe.ssl.model import build_model

    model, arch = build_model(TrainConfig(arch="smallcnn", width=8, projector="linear", projector_dim=4))
    torch.save({"format": FORMAT, "arch": arch, "model": model.state_dict()}, tmp_path / "trainer.pt")
    code, stdout, stderr = invoke(["spectrum", tmp_path / "trainer.pt", "--data", image_folder, "--json",
                                   "--out", tmp_path / "out", *image_args])
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["roles"] == {"backbone": "representation", "projector": "embedding"}
    assert document["layers"]["projector"]["dim"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["spectrum", "{pt}", "--arch", "resnet18"], "--data"),
        (["spectrum", "{pt}", "--arch", "resnet18", "--data", "{empty}"], "no images"),
        (["spectrum", "{pt}", "--arch", "resnet18", "--data", "{missing}"], "does not exist"),
        (["spectrum", "{missing}", "--arch", "resnet18", "--data", "{images}"], "does not exist"),
        (["spectrum", "{pt}", "--arch", "resnet18", "--data", "{images}", "--strict"], "corrupt.jpg"),
        (["spectrum", "{pt}", "--arch", "resnet18", "--data", "{images}", "--layer", "layer9"], "layer9"),
        (["spectrum", "{pt}", "--arch", "resnet18", "--data", "{images}", "--device", "tpu"], "--device"),
    ],
)
def test_input_errors_exit_2_with_one_line(tmp_path, checkpoints, image_folder, args, message, invoke, image_args):
    (tmp_path / "empty").mkdir()
    values = {"pt": checkpoints["pt"], "empty": tmp_path / "empty", "missing": tmp_path / "missing",
              "images": image_folder}
    code, stdout, stderr = invoke([a.format(**{k: str(v) for k, v in values.items()}) for a in args]
                                  + ["--out", str(tmp_path / "o"), *image_args])
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_malicious_checkpoint_refused_by_the_cli(tmp_path, image_folder, invoke, image_args):
    target = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(target), "w"))

    torch.save({"model": Planted()}, tmp_path / "evil.pt")
    code, _, stderr = invoke(["spectrum", tmp_path / "evil.pt", "--arch", "resnet18", "--data", image_folder,
                              "--out", tmp_path / "o", *image_args])
    assert code == 2 and "--trust-checkpoint" in stderr
    assert not target.exists()


def test_layers_lists_modules_with_shapes(checkpoints, invoke, image_args):
    code, stdout, _ = invoke(["layers", checkpoints["pt"], "--arch", "resnet18", "--image-size", "32"])
    assert code == 0
    rows = {line.split()[0]: line for line in stdout.splitlines()}
    assert "(2, 512, 1, 1)" in rows["layer4"]
    assert "(2, 512)" in rows["fc"] and "[representation]" in rows["fc"]


def test_help_shows_a_worked_example(invoke, image_args):
    for command in ("spectrum", "layers", "compare", "embeddings", "check"):
        code, stdout, _ = invoke([command, "--help"])
        assert code == 0 and f"collapse-probe {command} " in stdout


def test_builtin_data_and_max_samples(tmp_path, checkpoints, invoke, image_args):
    code, stdout, stderr = invoke(["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", "builtin:digits",
                                   "--max-samples", "20", "--json", "--out", tmp_path, *image_args])
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["layers"]["fc"]["n_samples"] == 20
    assert document["source"]["data"] == "builtin:digits"


def test_solo_learn_checkpoint_probes_both_spaces(tmp_path, resnet_state, image_folder, invoke, image_args):
    from torch import nn

    head = nn.Sequential(nn.Linear(512, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8))
    weights = {"backbone." + k: v for k, v in resnet_state.items() if not k.startswith("fc.")}
    weights |= {"projector." + k: v for k, v in head.state_dict().items()}
    torch.save({"state_dict": weights, "epoch": 5}, tmp_path / "solo.ckpt")
    code, stdout, stderr = invoke(["spectrum", tmp_path / "solo.ckpt", "--arch", "resnet18", "--data", image_folder,
                                   "--json", "--out", tmp_path / "out", *image_args])
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["roles"] == {"backbone": "representation", "projector": "embedding"}
    assert [document["layers"][n]["dim"] for n in ("backbone", "projector")] == [512, 8]
    code, stdout, _ = invoke(["layers", tmp_path / "solo.ckpt", "--arch", "resnet18", "--image-size", "32"])
    assert code == 0 and "backbone.layer4" in stdout and "[embedding]" in stdout


def test_directclr_checkpoint_uses_its_training_size_and_matches_the_library(tmp_path, invoke):
    """No --image-size: the crop size stored in the checkpoint's config is used, DirectCLR's
    embedding r[:, :d0] is probed too, and the numbers equal a direct library call."""
    from collapse_probe import spectrum
    from collapse_probe.ssl.checkpoint import FORMAT
    from collapse_probe.ssl.config import TrainConfig
    from collapse_probe.ssl.data import eval_loader
    from collapse_probe.ssl.model import build_model

    config = TrainConfig(arch="smallcnn", width=8, method="directclr", d0=5, image_size=16)
    model, arch = build_model(config)
    torch.save({"format": FORMAT, "arch": arch, "config": config.to_dict(), "model": model.state_dict()}, tmp_path / "d.pt")
    code, stdout, stderr = invoke(["spectrum", tmp_path / "d.pt", "--data", "builtin:digits", "--json", "--quiet",
                                   "--workers", "0", "--out", tmp_path / "out"])
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["roles"] == {"backbone": "representation", "embedding": "embedding"}
    expected = spectrum(model, eval_loader("builtin:digits", "val", 16), layers=["backbone", "embedding"], progress=False)
    for name in ("backbone", "embedding"):  # PIL vs tensor resampling of the 32 px digits to 16 px
        got = np.asarray(document["layers"][name]["eigenvalues"])
        want = expected[name].eigenvalues.numpy()
        np.testing.assert_allclose(got[:5], want[:5], rtol=2e-2)
        assert document["layers"][name]["metrics"]["effective_rank"] == pytest.approx(expected[name].effective_rank, rel=1e-2)
    assert document["layers"]["embedding"]["dim"] == 5
