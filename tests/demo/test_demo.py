"""A shortened `collapse-probe demo`, end to end through the CLI (CI's smoke test)."""

import pandas as pd
import pytest
from click.testing import CliRunner
from collapse_probe_cli.main import cli

from collapse_probe import Spectrum


def test_shortened_demo_writes_table_figure_and_consistent_spectra(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "2"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "demo.csv")
    assert list(table["variant"]) == ["simclr-mlp", "simclr-mlp", "simclr-none", "simclr-none", "directclr", "directclr"]
    assert (out / "demo.png").stat().st_size > 10_000
    for row in table.itertuples():
        saved = Spectrum.load(out / f"{row.variant}_{row.space}.json")
        assert row.effective_rank == pytest.approx(saved.effective_rank, rel=1e-12)
        assert row.dim == saved.dim and 1.0 <= row.effective_rank <= row.dim
        assert 0.0 <= row.knn_top1 <= 1.0
    dims = dict(zip(table["variant"] + "/" + table["space"], table["dim"], strict=True))
    # the paper's two spaces: SimCLR without projector embeds with r itself; DirectCLR with r[:, :d0]
    assert dims["simclr-none/embedding"] == dims["simclr-none/representation"]
    assert dims["directclr/embedding"] < dims["directclr/representation"]
    assert "simclr-mlp" in result.output and "effective_rank" in result.output


def test_demo_rejects_unknown_variant(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--variant", "byol"])
    assert result.exit_code == 2 and "byol" in result.output
