"""wdiv.plots: figures draw what the tables say, and the library never touches pyplot."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from _fake_study import make_study
from wdiv import report
from wdiv.report import figures as plots
from wdiv.report.collect import collect


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    rep = report.build(collect(make_study(tmp_path_factory.mktemp("plots"), extras=False, diversity=True)))
    return rep


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_per_layer_d_one_panel_per_category_one_line_per_level(tables):
    fig = plots.per_layer_d(tables.layers, "log_norm")
    assert isinstance(fig, Figure)
    axes = _visible(fig)
    assert [ax.get_title() for ax in axes] == ["dropout", "weight_decay"]
    wd = axes[1]
    lines = [ln for ln in wd.get_lines() if ln.get_label() in ("0.0001", "0.001")]
    assert len(lines) == 2
    expected = tables.layers[tables.layers.arm == "weight_decay"].groupby(["level_index", "layer_order"])["D_log_norm"].mean()
    np.testing.assert_allclose(lines[1].get_ydata(), expected.loc[2].to_numpy())


def test_metric_vs_level_plots_seed_means_with_ci(tables):
    fig = plots.metric_vs_level(tables.categories, "log_norm")
    wd = [ax for ax in _visible(fig) if ax.get_title() == "weight_decay"][0]
    assert wd.get_xscale() == "log"
    rows = tables.categories[(tables.categories.category == "weight_decay") & (tables.categories.metric == "log_norm")
                             & (tables.categories.level.astype(str) != "all")]
    (line,) = [ln for ln in wd.get_lines() if len(ln.get_xdata()) == 2 and ln.get_marker() == "o"]
    np.testing.assert_allclose(line.get_ydata(), rows["mean_D"].to_numpy())


def test_plots_redraw_from_csv_round_trip(tables, tmp_path):
    tables.categories.to_csv(tmp_path / "c.csv", index=False)
    tables.runs.to_csv(tmp_path / "r.csv", index=False)
    cats, runs = pd.read_csv(tmp_path / "c.csv"), pd.read_csv(tmp_path / "r.csv")
    assert isinstance(plots.metric_vs_level(cats, "alpha", "dM"), Figure)
    fig = plots.accuracy_vs_diversity(runs)
    assert [ax.get_ylabel() for ax in fig.axes] == ["test acc", "ood acc"]
    esd = plots.esd_overlay({"a": np.geomspace(0.1, 10, 50), "b": np.geomspace(0.2, 20, 50)}, title="x")
    assert len(esd.axes[0].get_legend().get_texts()) == 2


def test_plots_module_does_not_import_pyplot():
    code = "import sys, wdiv.report.figures, wdiv.report; assert 'matplotlib.pyplot' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
