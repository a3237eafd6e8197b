"""Figure properties a reader relies on (titles, roles, legends off the data, distinct lines, colorbar), not pixels."""

from __future__ import annotations

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from collapse_probe.integrations.monitor import plot_spectrum_history
from collapse_probe.results.plot import plot_layers, plot_spectra
from collapse_probe.results.spectrum import Spectrum


def _spectrum(values) -> Spectrum:
    values = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    return Spectrum(eigenvalues=values, uncentered_singular_values=values.sqrt(), mean=torch.zeros(len(values)),
                    variances=values.clone(), n_samples=1000, input_dtype="float32")


def _rendered(figure):
    FigureCanvasAgg(figure).draw()
    return figure.canvas.get_renderer()


def test_spectrum_png_panels_name_the_layer_and_its_role():
    z = torch.randn(300, 6, dtype=torch.float64)
    figure = plot_layers({"fc": Spectrum.from_embeddings(z), "head": _spectrum([1.0, 0.5, 0.0])},
                         {"fc": "representation", "head": "embedding"})
    assert [ax.get_title() for ax in figure.axes] == ["fc (representation)", "head (embedding)"]
    assert all("Embedding covariance spectrum" not in ax.get_title() for ax in figure.axes)


def test_zeros_at_the_floor_are_explained_once_not_in_every_label():
    ax = plot_spectra({"a": _spectrum([1.0, 0.5, 0.0, 0.0]), "b": _spectrum([1.0, 0.2, 0.1, 0.0])})
    legend = ax.get_legend()
    assert all("at the floor" not in t.get_text() for t in legend.get_texts())
    note = legend.get_title().get_text()
    assert "numerically zero" in note and "drawn at the floor" in note and "a 2, b 1" in note
    single = plot_spectra({"a": _spectrum([1.0, 0.0, 0.0])}).get_legend().get_title().get_text()
    assert single.replace("\n", " ").startswith("2 eigenvalues are numerically zero (drawn at the floor")


def test_compare_legend_sits_outside_the_axes_and_identical_curves_differ_in_style():
    same = _spectrum([1.0, 0.5, 0.25, 0.1])
    ax = plot_spectra({"run1:backbone": same, "run2:backbone": same, "run3:backbone": _spectrum([1.0, 0.9, 0.8, 0.7])},
                      roles={"run1:backbone": "representation"})
    renderer = _rendered(ax.figure)
    legend_box, axes_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend_box.y1 <= axes_box.y0  # wholly below the axes: it covers no data
    figure_box = ax.figure.bbox
    assert figure_box.x0 <= legend_box.x0 and legend_box.x1 <= figure_box.x1 and legend_box.y0 >= figure_box.y0
    styles = [(line.get_linestyle(), line.get_linewidth()) for line in ax.get_lines()]
    assert len(set(styles)) == 3  # the two identical curves do not hide each other
    assert "(representation)" in ax.get_legend().get_texts()[0].get_text()


def test_trainer_spectra_png_has_title_colorbar_and_no_pale_last_epoch():
    history = [(epoch, {"representation": _spectrum([1.0, 0.5 / epoch, 0.1 / epoch]),
                        "embedding": _spectrum([1.0, 0.1, 0.0])}) for epoch in (1, 2, 3, 4)]
    figure = plot_spectrum_history(history)
    renderer = _rendered(figure)
    assert figure.get_suptitle().startswith("Covariance spectra during training")
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["representation", "embedding"]
    colorbars = [ax for ax in figure.axes if ax.get_ylabel() == "epoch"]
    assert len(colorbars) == 1
    last = panels[0].get_lines()[-1].get_color()
    assert sum(last[:3]) / 3 < 0.6  # the last epoch's line is not a pale yellow
    for ax in panels:  # the y label is inside the figure, not clipped at its edge
        label_box = ax.yaxis.label.get_window_extent(renderer)
        assert label_box.x0 >= 0 and label_box.y0 >= 0 and label_box.y1 <= figure.bbox.y1
