"""`collapse-probe lidar`: the JSON and the table against the library on the same seeded views, the
trainer's own LiDAR of that checkpoint, and bad input in one line with exit 2."""

from __future__ import annotations

import json

import pytest

from collapse_probe import lidar
from collapse_probe.data.views import open_views
from collapse_probe.models.loading import load_encoder
from collapse_probe.ssl import preset_config, train

#: 60 held-out digits, 4 views each, at the checkpoint's 16-pixel crop size.
VIEWS_ARGS = ["--data", "builtin:digits", "--views", "4", "--max-samples", "60", "--batch-size", "16",
              "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step demo run that also logged LiDAR on the same 60 images: (checkpoint, last metrics row)."""
    out = tmp_path_factory.mktemp("lidar_run")
    config = preset_config("demo", epochs=1, max_steps_per_epoch=2, width=4, batch_size=32, projector_dim=8,
                           monitor_lidar_views=4, monitor_samples=60, threads=1, out=str(out))
    result = train(config)
    return result.checkpoint_path, result.metrics[-1]


def _library(checkpoint, seed: int = 0) -> dict:
    """The same probe by direct library calls (no CLI code involved)."""
    loader = open_views("builtin:digits", views=4, image_size=16, batch_size=16, max_samples=60, seed=seed)
    return lidar(load_encoder(checkpoint), loader, views=4, layers=["backbone", "projector"], progress=False)


def test_json_equals_the_library_and_the_trainers_monitor(trained, invoke):
    checkpoint, row = trained
    code, stdout, stderr = invoke(["lidar", checkpoint, *VIEWS_ARGS, "--json", "--quiet"])
    assert code == 0, stderr
    document = json.loads(stdout)
    assert list(document["layers"]) == ["backbone", "projector"]
    assert document["source"]["views"] == 4 and document["source"]["seed"] == 0
    assert document["source"]["image_size"] == 16  # the checkpoint's training crop
    reference = _library(checkpoint)
    for name, layer in document["layers"].items():
        assert layer["lidar"] == pytest.approx(reference[name].lidar, rel=1e-6)
        assert layer["n_classes"] == 60 and layer["views"] == 4
    assert document["layers"]["backbone"]["role"] == "representation"
    # the trainer logged the representation's LiDAR on these very views (seed 0, first 60 val images)
    assert document["layers"]["backbone"]["lidar"] == pytest.approx(row["representation/lidar"], rel=1e-6)


def test_table_and_seed(trained, invoke):
    checkpoint, _ = trained
    code, stdout, stderr = invoke(["lidar", checkpoint, *VIEWS_ARGS, "--seed", "1"])
    assert code == 0, stderr
    header, *rows = stdout.strip().splitlines()
    assert header.split() == ["layer", "role", "LiDAR", "max", "dim", "images", "views"]
    reference = _library(checkpoint, seed=1)
    backbone = rows[0].split()
    assert backbone[0] == "backbone" and backbone[2] == f"{reference['backbone'].lidar:.2f}"
    assert backbone[3:] == ["16", "16", "60", "4"]
    assert reference["backbone"].lidar != pytest.approx(_library(checkpoint)["backbone"].lidar, rel=1e-6)


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "{missing}", "--views", "4"], "data folder"),
    (["--views", "4"], "--data DIR (or builtin:NAME) is needed"),
])
def test_bad_input_exits_2_in_one_line(trained, invoke, tmp_path, args, message):
    checkpoint, _ = trained
    args = [a.format(missing=tmp_path / "no_such_folder") for a in args]
    code, stdout, stderr = invoke(["lidar", checkpoint, *args, "--quiet"])
    assert code == 2 and stdout == ""
    (line,) = stderr.strip().splitlines()
    assert line.startswith("Error: ") and message in line


def test_one_view_is_a_usage_error(trained, invoke):
    checkpoint, _ = trained
    code, stdout, stderr = invoke(["lidar", checkpoint, "--data", "builtin:digits", "--views", "1", "--quiet"])
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    # click's usage error: the usage line, a --help hint, then the one error line
    assert stderr.strip().splitlines()[-1] == "Error: Invalid value for '--views': 1 is not in the range x>=2."
