"""records: every damage a reader can meet gets its own reason; an intact file gets None."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from wdiv import records


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "spectra.csv"
    pd.DataFrame({"longname": [f"l{i}" for i in range(5)], "alpha": np.linspace(2, 4, 5)}).to_csv(path, index=False)
    return path


def test_intact_csv_matches_its_entry(csv_file):
    entry = records.describe(csv_file)
    assert entry["rows"] == 5 and entry["bytes"] == csv_file.stat().st_size
    assert records.check(csv_file, entry, required_columns=["longname", "alpha"]) is None


def test_each_damage_has_its_reason(csv_file, tmp_path):
    entry = records.describe(csv_file)
    text = csv_file.read_text()
    cases = {
        "truncated": text[: len(text) // 2],
        "empty": "",
        "not a CSV": None,
        "fewer layers": "\n".join(text.splitlines()[:2]) + "\n" + "x" * (len(text)),
        "missing columns": text.replace("alpha", "beta_"),
    }
    got = {}
    for name, body in cases.items():
        if body is None:
            csv_file.write_bytes(b"\x00\xff" * len(text) + b'"\n\x00')
        else:
            csv_file.write_text(body)
        got[name] = records.check(csv_file, entry, required_columns=["longname", "alpha"])
    assert got["truncated"].startswith("truncated (")
    assert got["empty"] == records.EMPTY
    assert got["not a CSV"] == records.NOT_CSV
    assert got["missing columns"] == "missing columns: alpha"
    assert got["fewer layers"].startswith("fewer layers than recorded (")
    csv_file.unlink()
    assert records.check(csv_file, entry) == records.MISSING


def test_same_size_edit_is_a_hash_mismatch(csv_file):
    entry = records.describe(csv_file)
    csv_file.write_text(csv_file.read_text().replace("l1", "l9"))
    assert records.check(csv_file, entry).startswith("hash mismatch")
    assert records.check(csv_file, None) is None  # without a record only the structure is judged


def test_safetensors_and_npz_entries(tmp_path):
    st = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2)}, st)
    entry = records.describe(st)
    assert entry["tensors"] == 2 and records.check(st, entry) is None
    st.write_bytes(st.read_bytes()[:20])
    assert records.check(st, entry).startswith("truncated")
    st.write_bytes(b"hello world, not tensors at all" * 10)
    assert records.check(st, None) == records.NOT_SAFETENSORS
    npz = tmp_path / "esd.npz"
    np.savez_compressed(npz, x=np.arange(3.0), y=np.arange(2.0))
    entry = records.describe(npz)
    assert entry["arrays"] == 2 and records.check(npz, entry) is None
    npz.write_bytes(b"\x01" * 500)
    assert records.check(npz, None) == records.NOT_NPZ


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "run.json"
    with pytest.raises(ValueError, match="run.json: missing"):
        records.read_json(path)
    path.write_text("")
    with pytest.raises(ValueError, match="run.json: empty"):
        records.read_json(path)
    path.write_bytes(b"\x89PNG\x00\x01")
    with pytest.raises(ValueError, match="run.json: not JSON"):
        records.read_json(path)
    path.write_text('{"status": "complete"}')
    assert records.read_json(path) == {"status": "complete"}


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp makes 0600 files; results on a shared cluster disk must be readable as open() makes them."""
    import os

    from wdiv.io import write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    write_text(atomic, "x")
    assert os.stat(atomic).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_without_an_entry_a_csv_cut_mid_row_is_truncated_and_whole_rows_are_not(csv_file, tmp_path):
    data = csv_file.read_bytes()
    cut = tmp_path / "cut.csv"
    cut.write_bytes(data[: data.rindex(b",")])  # the last row loses its last field(s)
    assert records.check(cut) == "truncated (its last row is cut short)"
    whole = tmp_path / "whole.csv"
    whole.write_bytes(data[: data.index(b"\n", data.index(b"\n") + 1) + 1])  # header and one whole row
    assert records.check(whole) is None
    no_newline = tmp_path / "no_newline.csv"  # a hand-written table may end without a newline: all fields there
    no_newline.write_bytes(data.rstrip(b"\n"))
    assert records.check(no_newline) is None
