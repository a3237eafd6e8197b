"""`check --min-class-effective-rank`: every class with enough images judged (against numpy), the
rest named as cannot-judge, a failed class exits 1 whatever could not be judged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collapse_probe import spectrum
from collapse_probe.data.images import open_images

ARGS = ["--data", "builtin:digits", "--image-size", "8", "--workers", "0", "--quiet", "--trust-checkpoint",
        "--layer", "2"]


def _class_ranks(model, max_samples=None):
    loader = open_images("builtin:digits", image_size=8, batch_size=64, max_samples=max_samples, labels=True)
    result = spectrum(model, loader, layers="2", per_class=True, progress=False)
    return {label: s.effective_rank for label, s in result.classes.items()}


def test_every_class_is_judged_and_the_lowest_fails(conv_model_file, invoke, tmp_path):
    model, path = conv_model_file
    ranks = _class_ranks(model)
    bound = float(np.median(list(ranks.values())))
    code, out, err = invoke(["check", path, *ARGS, "--min-class-effective-rank", bound,
                             "--report-json", tmp_path / "r.json"])
    assert code == 1, err
    report = json.loads((tmp_path / "r.json").read_text())
    judged = {c["layer"]: c for c in report["checks"] if c["check"] == "min-class-effective-rank"}
    assert len(judged) == len(ranks) == 10
    for label, rank in ranks.items():
        entry = judged[f"2[class {label}]"]
        assert entry["value"] == pytest.approx(rank, rel=1e-9) and entry["passed"] == (rank >= bound)


def test_classes_with_too_few_images_are_named_not_passed(conv_model_file, invoke):
    _, path = conv_model_file
    code, out, err = invoke(["check", path, *ARGS, "--max-samples", "40", "--min-class-effective-rank", "1"])
    assert code == 2 and "CANNOT JUDGE min-class-effective-rank [2[class" in out
    assert err.count("\n") == 1 and "cannot judge" in err
