"""analyze() API and the `python -m wdiv.analyze` CLI: inputs, outputs, reruns, references."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import wdiv.analyze as cli
from wdiv.spectral import analyze




class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 16, 3)
        self.norm = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 32)


def make_model(seed=0, scale=1.0):
    torch.manual_seed(seed)
    m = Net()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


def save(model, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_run(root, name, seed, pretrained):
    run = root / name
    save(make_model(seed, scale=1.1), run / "model.safetensors")
    (run / "checkpoints").mkdir()
    save(make_model(seed), run / "checkpoints" / "model.safetensors")  # resume state: never analysed
    (run / "run.json").write_text(json.dumps({"status": "complete", "pretrained": {"path": str(pretrained), "sha256": "abc"}}))
    return run


def test_module_state_dict_and_file_give_the_same_table(tmp_path):
    m = make_model()
    a = analyze(m)
    b = analyze(m.state_dict())
    c = analyze(save(m, tmp_path / "model.safetensors"))
    assert list(a["longname"]) == ["conv", "fc1", "fc2"]
    assert {"layer_id", "name", "longname", "N", "M", "Q", "rf", "num_evals", "status"} <= set(a.columns)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    conv = a.set_index("longname").loc["conv"]
    assert (conv.N, conv.M, conv.rf, conv.num_evals) == (16, 12, 9, 108)


def test_per_slice_rows_and_conv_normalisation():
    m = make_model()
    pooled = analyze(m).set_index("longname")
    slices = analyze(m, pool=False)
    conv = slices[slices.longname == "conv"]
    assert list(conv.slice_id) == list(range(9)) and (conv.num_evals == 12).all()
    # WeightWatcher's conv2d_norm: W*sqrt(1/2) pooled, W*sqrt(rf/2) per slice
    assert conv.lambda_max.max() == pytest.approx(pooled.loc["conv", "lambda_max"] * 9, rel=1e-12)
    w = m.conv.weight.detach().double()
    top = max(torch.linalg.svdvals(w[:, :, i, j]).max().item() ** 2 for i in range(3) for j in range(3))
    assert pooled.loc["conv", "lambda_max"] == pytest.approx(top / 2, rel=1e-10)


def test_randomize_is_seeded():
    m = make_model()
    a = analyze(m, randomize=True, seed=3)
    b = analyze(m, randomize=True, seed=3)
    c = analyze(m, randomize=True, seed=4)
    assert np.array_equal(a.rand_distance, b.rand_distance)
    assert not np.array_equal(a.rand_distance, c.rand_distance)
    assert (a.rand_distance > 0).all()


def test_include_exclude_and_unknown_option():
    m = make_model()
    assert list(analyze(m, include="fc", exclude="2").longname) == ["fc1"]
    with pytest.raises(TypeError, match="bogus"):
        analyze(m, bogus=1)


def test_cli_tree_of_runs_writes_skips_and_forces(tmp_path):
    pre = save(make_model(0), tmp_path / "pretrained" / "model.safetensors")
    runs = [make_run(tmp_path / "runs", f"r{i}/seed0", i, pre) for i in range(2)]
    assert cli.main([str(tmp_path / "runs"), "-q"]) == 0
    for run in runs:
        df = pd.read_csv(run / "spectra.csv")
        assert list(df.longname) == ["conv", "fc1", "fc2"]
        summary = json.loads((run / "spectra_summary.json").read_text())
        assert summary["alpha"] == pytest.approx(df.alpha.mean())
        assert summary["wdiv"]["n_layers"] == 3
        assert not (run / "checkpoints" / "spectra.csv").exists()
    stamp = (runs[0] / "spectra.csv").stat().st_mtime_ns
    assert cli.main([str(tmp_path / "runs"), "-q"]) == 0
    assert (runs[0] / "spectra.csv").stat().st_mtime_ns == stamp  # up to date: skipped
    assert cli.main([str(tmp_path / "runs"), "-q", "--fit", "hill"]) == 0
    assert (runs[0] / "spectra.csv").stat().st_mtime_ns != stamp  # other options: redone
    stamp = (runs[0] / "spectra.csv").stat().st_mtime_ns
    assert cli.main([str(tmp_path / "runs"), "-q", "--fit", "hill", "--force"]) == 0
    assert (runs[0] / "spectra.csv").stat().st_mtime_ns != stamp


def test_cli_base_from_run_json_is_analysed_once(tmp_path, monkeypatch):
    pre = save(make_model(0), tmp_path / "pretrained" / "model.safetensors")
    runs = [make_run(tmp_path / "runs", f"r{i}", i + 1, pre) for i in range(3)]
    calls = []
    real = cli.analyse_checkpoint
    monkeypatch.setattr(cli, "analyse_checkpoint", lambda w, *a, **k: calls.append(str(w)) or real(w, *a, **k))
    assert cli.main([str(tmp_path / "runs"), "--base", "-q"]) == 0
    assert calls.count(str(pre)) == 1 and len(calls) == 4
    for run in runs:
        df = pd.read_csv(run / "spectra.csv")
        base = pd.read_csv(run / "spectra_base.csv")
        assert list(base.longname) == list(df.longname)
        np.testing.assert_allclose(df.delta_log_norm, df.log_norm - base.log_norm)
        assert "delta_N" not in df and "delta_layer_id" not in df
    # the reference against itself: all deltas zero
    out = tmp_path / "self.csv"
    assert cli.main([str(pre), "--base", str(pre), "--out", str(out), "-q"]) == 0
    assert (pd.read_csv(out).filter(like="delta_").abs().to_numpy() == 0).all()
    assert "delta_alpha" not in pd.read_csv(tmp_path / "self_base.csv")


def test_cli_lone_file_out_and_plots(tmp_path):
    w = save(make_model(), tmp_path / "weights" / "ckpt.safetensors")
    out = tmp_path / "res" / "my.csv"
    assert cli.main([str(w), "--out", str(out), "--plot", "--randomize", "-q"]) == 0
    assert len(pd.read_csv(out)) == 3
    assert (tmp_path / "res" / "my_summary.json").is_file()
    pngs = sorted(p.name for p in (tmp_path / "res" / "esd").glob("*.png"))
    assert len(pngs) == 3 and pngs[0].endswith("conv.png")
    # default output names beside a lone file that is not model.safetensors
    assert cli.main([str(w), "-q"]) == 0
    assert (w.parent / "ckpt.spectra.csv").is_file()


@pytest.mark.slow  # spawns worker processes that import torch: ~10-60 s on the shared 2-core box
def test_cli_jobs_gives_identical_outputs(tmp_path):
    pre = save(make_model(0), tmp_path / "pretrained" / "model.safetensors")
    runs = [make_run(tmp_path / "runs", f"r{i}", i, pre) for i in range(2)]
    assert cli.main([str(tmp_path / "runs"), "-q", "--randomize"]) == 0
    first = [(r / "spectra.csv").read_text() for r in runs]
    assert cli.main([str(tmp_path / "runs"), "-q", "--randomize", "--force", "--jobs", "2"]) == 0
    assert [(r / "spectra.csv").read_text() for r in runs] == first


def test_farms_column_is_the_fit_of_the_pooled_window_esd():
    from wdiv.spectral.farms import farms_fit, median_fit
    from wdiv.spectral.options import FarmsOptions

    m = make_model()
    df = analyze(m, farms=True, farms_window=12).set_index("longname")
    assert df.alpha_farms.notna().all()
    settings = FarmsOptions(window=12).settings()
    expected = farms_fit(m.fc1.weight.detach().numpy(), settings)["alpha"]
    assert df.loc["fc1", "alpha_farms"] == pytest.approx(expected, rel=1e-9)
    slices = m.conv.weight.detach().permute(2, 3, 0, 1).reshape(9, 16, 12).numpy()
    assert df.loc["conv", "alpha_farms"] == pytest.approx(farms_fit(slices, settings, conv=True)["alpha"], rel=1e-9)
    # the default preset's m=100 exceeds fc1 (48 x 64): rows all taken, columns as the reference's
    # slice W[:, 64-100:64] reads them (the last 36)
    big = analyze(m, farms=True).set_index("longname")
    w = m.fc1.weight.detach().double().numpy()[:, 28:]
    ref = median_fit(np.linalg.svd(w, compute_uv=False) ** 2)["alpha"]
    assert big.loc["fc1", "alpha_farms"] == pytest.approx(ref, rel=1e-9)
    assert "alpha_farms" not in analyze(m)


def test_cli_xmax_integer_drops_top_eigenvalues_like_the_api(tmp_path):
    w = save(make_model(), tmp_path / "model.safetensors")
    assert cli.main([str(w), "--xmax", "-1", "-q"]) == 0
    got = pd.read_csv(tmp_path / "spectra.csv")
    want = analyze(w, xmax=-1)
    np.testing.assert_allclose(got.alpha, want.alpha, rtol=1e-12)
    assert not np.allclose(got.alpha, analyze(w).alpha)


def test_half_precision_checkpoints_are_analysed_in_float64(tmp_path):
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in make_model().state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    got = analyze(tmp_path / "model.safetensors", randomize=True, farms=True, farms_window=12)
    want = analyze({k: v.double() for k, v in sd.items()}, randomize=True, farms=True, farms_window=12)
    pd.testing.assert_frame_equal(got, want, rtol=1e-10)
