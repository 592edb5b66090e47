"""analyze --save-esd writes the fitted eigenvalues; --base hashes each layer's stored weights."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from wdiv import analyze
from wdiv.spectral.torch_weights import tensor_sha256


def _weights(seed, changed=True):
    g = torch.Generator().manual_seed(seed)
    frozen = torch.Generator().manual_seed(99)
    return {
        "frozen.weight": torch.randn(64, 16, generator=frozen),
        "fc.weight": torch.randn(96, 32, generator=g if changed else frozen),
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "half.weight": torch.randn(48, 24, generator=g).to(torch.bfloat16),
    }


@pytest.fixture()
def run(tmp_path):
    ref = tmp_path / "pretrained.safetensors"
    save_file(_weights(0), str(ref))
    run_dir = tmp_path / "runs" / "a" / "seed0"
    run_dir.mkdir(parents=True)
    ft = _weights(1)
    ft["frozen.weight"] = _weights(0)["frozen.weight"].clone()
    save_file(ft, str(run_dir / "model.safetensors"))
    (run_dir / "run.json").write_text(json.dumps({"status": "complete", "arm": "baseline", "seed": 0,
                                                  "pretrained": {"path": str(ref), "sha256": None}}))
    return tmp_path / "runs", run_dir


def test_save_esd_holds_the_fitted_eigenvalues_of_every_row(run):
    runs, run_dir = run
    assert analyze.main([str(runs), "--base", "--save-esd", "-q"]) == 0
    for csv, npz in (("spectra.csv", "esd.npz"), ("spectra_base.csv", "esd_base.npz")):
        table = pd.read_csv(run_dir / csv)
        with np.load(run_dir / npz) as esd:
            assert sorted(esd.files) == sorted(table["longname"])
            for row in table.itertuples(index=False):
                ev = esd[row.longname]
                assert ev.dtype == np.float64 and len(ev) == row.num_evals
                assert ev.max() == pytest.approx(row.lambda_max, rel=1e-12)
    assert json.loads((run_dir / "spectra_summary.json").read_text())["wdiv"]["esd_saved"] is True
    assert not list(run_dir.rglob("*.tmp"))


def test_per_slice_rows_have_their_own_keys(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"conv.weight": torch.randn(16, 8, 3, 3)}, str(path))
    assert analyze.main([str(path), "--per-slice", "--save-esd", "--min-evals", "1", "-q"]) == 0
    with np.load(tmp_path / "m.esd.npz") as esd:
        assert sorted(esd.files) == sorted(f"conv#slice{k}" for k in range(9))


def test_weight_hashes_tell_unchanged_layers_exactly(run):
    runs, run_dir = run
    assert analyze.main([str(runs), "--base", "-q"]) == 0
    ft = pd.read_csv(run_dir / "spectra.csv").set_index("longname")["weights_sha256"]
    pre = pd.read_csv(run_dir / "spectra_base.csv").set_index("longname")["weights_sha256"]
    assert ft["frozen"] == pre["frozen"]
    for name in ("fc", "conv", "half"):  # dense, 4-D conv and bf16 layers that changed
        assert ft[name] != pre[name]
    assert ft["half"] == tensor_sha256(_weights(1)["half.weight"])
    # bf16 hashed as stored: the same values in float32 are a different tensor
    assert tensor_sha256(_weights(1)["half.weight"].float()) != ft["half"]


def test_up_to_date_needs_the_esd_files_when_asked(run, capsys):
    runs, run_dir = run
    assert analyze.main([str(runs), "--base"]) == 0
    capsys.readouterr()
    assert analyze.main([str(runs), "--base"]) == 0
    assert "0 written, 1 up to date" in capsys.readouterr().err
    assert not (run_dir / "esd.npz").exists()
    assert analyze.main([str(runs), "--base", "--save-esd"]) == 0  # an output made without esd is redone
    assert "1 written" in capsys.readouterr().err and (run_dir / "esd_base.npz").is_file()
