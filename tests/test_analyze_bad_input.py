"""Bad input: one clear line per bad checkpoint, the others still analysed, exit 1, no partial csv."""

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import wdiv.analyze as cli




def _save(sd, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def _sd(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(40, 30, generator=g), "b.weight": torch.randn(50, 20, generator=g)}


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "runs"
    _save(_sd(0), root / "good" / "model.safetensors")
    (root / "empty").mkdir(parents=True)
    (root / "empty" / "model.safetensors").write_bytes(b"")
    blob = (root / "good" / "model.safetensors").read_bytes()
    (root / "trunc").mkdir()
    (root / "trunc" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    (root / "garbage").mkdir()
    (root / "garbage" / "model.safetensors").write_bytes(b"\x00" * 64)
    bad = _sd(1)
    bad["b.weight"][3, 4] = float("nan")
    _save(bad, root / "nan" / "model.safetensors")
    return root


def _errors(capsys):
    return [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]


def test_each_bad_checkpoint_is_one_line_and_the_rest_is_analysed(tree, tmp_path, capsys):
    nothing = tmp_path / "no_weights_here"
    nothing.mkdir()
    code = cli.main([str(tree), str(nothing), "-q"])
    assert code == 1
    errs = _errors(capsys)
    for name in ("empty", "trunc", "garbage"):
        line = [e for e in errs if f"{name}/model.safetensors" in e]
        assert len(line) == 1, errs
        assert not (tree / name / "spectra.csv").exists()
        assert not list((tree / name).glob(".spectra*"))  # no temporary leftovers
    assert any("empty file" in e for e in errs)
    assert [e for e in errs if "no_weights_here" in e and "no weights found" in e]
    # the NaN layer fails alone, with its file and layer named; the rest of that checkpoint is analysed
    nan_line = [e for e in errs if "nan/model.safetensors" in e]
    assert len(nan_line) == 1 and "layer b" in nan_line[0] and "NaN" in nan_line[0]
    df = pd.read_csv(tree / "nan" / "spectra.csv").set_index("longname")
    assert df.loc["b", "status"] == "failed" and pd.isna(df.loc["b", "alpha"])
    assert df.loc["a", "status"] == "success" and df.loc["a", "alpha"] > 0
    good = pd.read_csv(tree / "good" / "spectra.csv")
    assert list(good.longname) == ["a", "b"] and (good.status == "success").all()
    assert len(errs) == 5


def test_lone_bad_files_and_missing_path(tmp_path, capsys):
    (tmp_path / "e.pt").write_bytes(b"")
    assert cli.main([str(tmp_path / "e.pt"), "-q"]) == 1
    assert cli.main([str(tmp_path / "absent.safetensors"), "-q"]) == 1
    errs = _errors(capsys)
    assert len(errs) == 2 and "e.pt: empty file" in errs[0] and "absent.safetensors" in errs[1]
    assert not list(tmp_path.glob("*.csv"))


def test_a_good_file_beside_a_failure_keeps_its_previous_outputs(tree, capsys):
    assert cli.main([str(tree / "good"), "-q"]) == 0
    before = (tree / "good" / "spectra.csv").read_text()
    assert cli.main([str(tree / "good"), str(tree / "trunc"), "--force", "-q"]) == 1
    assert (tree / "good" / "spectra.csv").read_text() == before
