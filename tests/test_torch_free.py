"""Safetensors checkpoints are analysed without torch: the reader, the hashes, the process.

The numpy reader must give the values torch gives for every stored float dtype (bfloat16 and
float8 widened exactly), hashes equal to the ones torch-based readers write (so outputs of earlier
versions and of PyTorch files still compare layer by layer), and `python -m wdiv.analyze` on a
safetensors checkpoint must never import torch.
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from wdiv.spectral.safetensors_file import SafetensorsFile
from wdiv.spectral.torch_weights import tensor_sha256
from wdiv.spectral.weights import layer_hashes, open_weights, select_layers

FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


def _heavy_tailed(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) / torch.rand(*shape, generator=g).clamp_min(1e-3)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_numpy_reader_gives_torchs_values_and_hash_for_every_float_dtype(tmp_path, dtype):
    w = _heavy_tailed((37, 23), seed=1).to(dtype)
    save_file({"fc.weight": w}, str(tmp_path / "model.safetensors"))
    st = SafetensorsFile(tmp_path / "model.safetensors")
    got = st.get_tensor("fc.weight")
    expected = w.float() if dtype not in (torch.float64, torch.float16) else w
    assert got.dtype == expected.numpy().dtype
    np.testing.assert_array_equal(got, expected.numpy())  # exact widening, NaN codes included
    assert st.sha256("fc.weight") == tensor_sha256(w)


def test_float8_table_covers_every_code():
    """All 256 e4m3fn codes (NaN at 0x7f / 0xff, max 448, subnormals) against torch's own decoding."""
    from wdiv.spectral.safetensors_file import widen

    codes = np.arange(256, dtype=np.uint8)
    ours = widen(codes, "F8_E4M3")
    theirs = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(ours, theirs)
    ours5 = widen(codes, "F8_E5M2")
    theirs5 = torch.from_numpy(codes).view(torch.float8_e5m2).float().numpy()
    np.testing.assert_array_equal(ours5, theirs5)


def test_layer_hashes_agree_between_a_safetensors_file_and_the_same_state_dict(tmp_path):
    """The report tells unchanged layers by hash: a .safetensors file, a torch file and an in-memory
    state dict of the same weights must hash alike (bfloat16 hashed as stored, not widened)."""
    sd = {"a.weight": _heavy_tailed((40, 30), 2).to(torch.bfloat16), "b.weight": _heavy_tailed((30, 20), 3),
          "c.weight": _heavy_tailed((8, 4, 3, 3), 4).half()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.save(sd, tmp_path / "model.pt")
    hashes = []
    for weights in (tmp_path / "model.safetensors", tmp_path / "model.pt", sd):
        with open_weights(weights) as src:
            hashes.append(layer_hashes(src, select_layers(src)))
    assert hashes[0] == hashes[1] == hashes[2]
    assert set(hashes[0]) == {"a", "b", "c"}
    widened = {k: v.float() for k, v in sd.items()}
    with open_weights(widened) as src:
        assert layer_hashes(src, select_layers(src))["a"] != hashes[0]["a"]


def test_a_header_whose_bytes_disagree_with_its_shape_is_named(tmp_path):
    save_file({"fc.weight": torch.randn(6, 5)}, str(tmp_path / "model.safetensors"))
    raw = bytearray((tmp_path / "model.safetensors").read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["fc.weight"]["shape"] = [5, 5]
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    (tmp_path / "bad.safetensors").write_bytes(raw[:8] + text + raw[8 + n:])
    with open_weights(tmp_path / "bad.safetensors") as src, pytest.raises(Exception, match="fc.weight"):
        src.tensor("fc.weight")


ANALYSE_WITHOUT_TORCH = r"""
import sys
from wdiv.analyze import main
code = main(sys.argv[1:])
print("TORCH_LOADED" if "torch" in sys.modules else "NO_TORCH")
sys.exit(code)
"""


def _run(args):
    return subprocess.run([sys.executable, "-c", ANALYSE_WITHOUT_TORCH, *args], capture_output=True, text=True,
                          timeout=300)


def test_analyze_on_safetensors_never_imports_torch_and_matches_the_torch_input(tmp_path):
    """A dense layer wide enough to stream, a bf16 one, a conv kernel and a sharded checkpoint: the
    CLI process ends with torch never imported, and its table equals the in-memory analysis of the
    same tensors (where torch is loaded by the caller)."""
    from wdiv.spectral import analyze

    sd = {"big.weight": _heavy_tailed((300, 120), 5), "half.weight": _heavy_tailed((90, 70), 6).to(torch.bfloat16),
          "conv.weight": _heavy_tailed((16, 8, 3, 3), 7)}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    shards = tmp_path / "sharded"
    shards.mkdir()
    weight_map = {}
    for i, key in enumerate(sorted(sd)):
        name = f"model-{i:05d}-of-00003.safetensors"
        save_file({key: sd[key]}, str(shards / name))
        weight_map[key] = name
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for target in (folder, shards):
        done = _run([str(target), "-q", "--randomize"])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "NO_TORCH"
        table = pd.read_csv(target / "spectra.csv")
        expected = analyze(sd, randomize=True)
        assert list(table["longname"]) == list(expected["longname"]) == ["big", "conv", "half"]
        for col in ("alpha", "log_spectral_norm", "stable_rank", "rand_distance"):
            np.testing.assert_allclose(table[col], expected[col], rtol=1e-9, err_msg=col)


def test_analyze_on_a_torch_file_still_loads_it_with_torch(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"fc.weight": _heavy_tailed((60, 40), 8)}, folder / "model.pt")
    done = _run([str(folder), "-q"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "TORCH_LOADED"
    assert (folder / "spectra.csv").is_file()
