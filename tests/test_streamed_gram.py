"""Gram matrices streamed from the file: same bits as the whole-tensor path, never the whole tensor held."""

import json
import os
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from wdiv.spectral import analyze, esd
from wdiv.spectral.api import _layer_bytes, iter_layer_results
from wdiv.spectral.esd import EigenSolver, gram_eigenvalues, gram_numpy, gram_streamed
from wdiv.spectral.options import AnalyzeOptions
from wdiv.spectral.weights import WeightSource, WeightsError, open_weights, select_layers

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _tensors(dtype):
    g = torch.Generator().manual_seed(0)
    # tall (rows >= cols: W^T W over row blocks), wide (W W^T over column blocks), square
    return {"tall.weight": torch.randn(300, 90, generator=g).to(dtype),
            "wide.weight": torch.randn(80, 310, generator=g).to(dtype),
            "square.weight": torch.randn(96, 96, generator=g).to(dtype)}


def _sharded(folder, tensors):
    """Two safetensors shards and their index, in the Hugging Face layout."""
    keys = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((keys[:1], keys[1:])):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "shards"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_read_lines_and_streamed_gram_equal_the_dense_path_bit_for_bit(tmp_path, dtype, sharded):
    tensors = _tensors(dtype)
    if sharded:
        path = _sharded(tmp_path, tensors)
    else:
        path = tmp_path / "model.safetensors"
        save_file(tensors, str(path))
    with open_weights(path) as source:
        for key, w in tensors.items():
            assert source.can_stream(key)
            # what the engine analysed before: the tensor as numpy (bf16/fp16 widened exactly)
            dense = (w if dtype == torch.float64 else w.float()).numpy()
            np.testing.assert_array_equal(source.read_lines(key, 0, 7, 40), dense[7:40])
            np.testing.assert_array_equal(source.read_lines(key, 1, 3, 61), dense[:, 3:61])
            read = lambda axis, lo, hi, key=key: source.read_lines(key, axis, lo, hi)  # noqa: E731
            for block in (None, 1000, 97):  # one block; several; one line at a time for the wide one
                want = gram_numpy(dense, block_elems=block)
                got = gram_streamed(read, w.shape, block_elems=block)
                assert got.shape == (min(w.shape),) * 2 and got.dtype == np.float64
                np.testing.assert_array_equal(got, want)


def test_streamed_eigenvalues_equal_the_previous_path(tmp_path):
    tensors = _tensors(torch.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with open_weights(tmp_path / "model.safetensors") as source, EigenSolver("cpu", threads=2) as solver:
        keys = list(tensors)
        handles = solver.submit_streamed([(lambda a, lo, hi, k=k: source.read_lines(k, a, lo, hi), tensors[k].shape)
                                          for k in keys])
        for key, h in zip(keys, handles):
            evals, suspect, finite = h.result()
            dense = gram_eigenvalues(tensors[key])  # the whole-tensor path: the same blocks, the same bits
            x = tensors[key].double().numpy()
            before = np.linalg.eigvalsh(x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T)  # one full product
            assert evals.shape == dense.shape == (1, min(x.shape)) and finite and not suspect.any()
            np.testing.assert_array_equal(evals, dense)
            np.testing.assert_allclose(evals[0], before, rtol=1e-12, atol=1e-12 * before[-1])


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(96, 320)     # stored 320 x 96: row blocks
        self.down = nn.Linear(320, 80)   # stored 80 x 320: column blocks
        self.head = nn.Linear(80, 10)    # M <= 64: the small-matrix path, not streamed
        self.conv = nn.Conv2d(16, 72, 3)  # conv: dense path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_analyze_of_a_file_streams_and_gives_the_in_memory_table(tmp_path, dtype, monkeypatch):
    torch.manual_seed(0)
    state = {k: v.to(dtype).contiguous() for k, v in _Net().state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "shards").mkdir()
    _sharded(tmp_path / "shards", state)
    monkeypatch.setattr(esd, "_BLOCK_ELEMS", 5000)  # several blocks per layer
    want = analyze(state)  # in memory: the whole-tensor path
    read = []
    with open_weights(tmp_path / "model.safetensors") as st:
        def lines(key, axis, lo, hi):
            read.append(key)
            return st.read_lines(key, axis, lo, hi)

        source = WeightSource("counting", st.shapes, {k: st.is_float(k) for k in st.shapes}, st.tensor,
                              lines=lines, streamable=st.can_stream)
        got = pd.DataFrame([r.row for r in iter_layer_results(source, AnalyzeOptions())]).sort_values("layer_id")
    assert set(read) == {"up.weight", "down.weight"}  # streamed; head (M <= 64) and conv read whole
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    pd.testing.assert_frame_equal(analyze(tmp_path / "shards"), want)


def test_the_streamed_path_never_reads_a_whole_tensor(tmp_path, monkeypatch):
    w = torch.randn(8000, 200)  # 6.4 MB stored, 12.8 MB in float64
    save_file({"big.weight": w}, str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(esd, "_BLOCK_ELEMS", 8192)
    st = open_weights(tmp_path / "model.safetensors")
    blocks = []

    def lines(key, axis, lo, hi):
        out = st.read_lines(key, axis, lo, hi)
        blocks.append(out.size)
        return out

    def whole(key):
        raise AssertionError(f"{key} read whole")

    source = WeightSource("counting", st.shapes, {"big.weight": True}, whole, lines=lines, streamable=st.can_stream)
    rows = [r.row for r in iter_layer_results(source, AnalyzeOptions())]
    assert [r["longname"] for r in rows] == ["big"] and rows[0]["status"] == "success"
    assert len(blocks) == 8000 // (8192 // 200) and max(blocks) <= 8192  # 40 rows a block

    # and in bytes: the stream peaks well below the stored tensor (Gram 320 kB, block 64 kB)
    read = lambda axis, lo, hi: st.read_lines("big.weight", axis, lo, hi)  # noqa: E731
    tracemalloc.start()
    try:
        gram = gram_streamed(read, tuple(w.shape))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < w.numel() * 4 / 4
    np.testing.assert_array_equal(gram, gram_numpy(w.numpy()))


def test_queue_budgets_a_streamed_layer_by_its_gram_matrix(tmp_path):
    save_file({"emb.weight": torch.zeros(32000, 128)}, str(tmp_path / "m.safetensors"))
    spec = select_layers(open_weights(tmp_path / "m.safetensors"))[0]
    assert _layer_bytes(spec, streamed=True) == 8 * 128 * 128
    assert _layer_bytes(spec) == 4 * 32000 * 128


def test_a_file_cut_short_while_streaming_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w.weight": torch.randn(400, 100)}, str(path))
    source = open_weights(path)
    os.truncate(path, path.stat().st_size - 1000)
    assert source.read_lines("w.weight", 0, 0, 10).shape == (10, 100)
    with pytest.raises(WeightsError, match="model.safetensors.*truncated"):
        source.read_lines("w.weight", 0, 390, 400)
    with pytest.raises(WeightsError, match="model.safetensors.*truncated"):
        source.read_lines("w.weight", 1, 0, 10)


def test_tensors_held_in_memory_or_unsliceable_are_not_streamed(tmp_path):
    state = {"a.weight": torch.randn(100, 100), "k.weight": torch.randn(4, 3, 3, 3)}
    assert not open_weights(state).can_stream("a.weight")
    torch.save(state, tmp_path / "model.pt")
    assert not open_weights(tmp_path / "model.pt").can_stream("a.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    st = open_weights(tmp_path / "model.safetensors")
    assert st.can_stream("a.weight") and not st.can_stream("k.weight")


def test_without_the_blas_binding_the_gram_matrix_is_numpys(monkeypatch):
    from wdiv.spectral import lapack

    w = np.random.default_rng(1).standard_normal((500, 120))
    with_binding = gram_numpy(w, block_elems=120 * 64)
    monkeypatch.setattr(lapack, "_dsyrk", lambda: None)
    without = gram_numpy(w, block_elems=120 * 64)
    np.testing.assert_array_equal(without, without.T)
    np.testing.assert_allclose(with_binding, without, rtol=1e-13, atol=1e-13 * np.abs(without).max())
    np.testing.assert_allclose(without, w.T @ w, rtol=1e-13, atol=1e-13 * np.abs(without).max())


def test_a_header_whose_byte_span_disagrees_with_the_shape_is_named_not_streamed(tmp_path):
    """fc.weight claims 100 x 80 float32 but its data_offsets span 100 x 81: streaming from the shape alone
    would read the wrong bytes; the layer goes to the whole-tensor read, which names the damage."""
    rng = np.random.default_rng(0)
    good = rng.standard_normal((100, 81)).astype(np.float32)
    header = {"fc.weight": {"dtype": "F32", "shape": [100, 80], "data_offsets": [0, good.nbytes]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + good.tobytes())
    with open_weights(path) as source:
        assert not source.can_stream("fc.weight")
    with pytest.raises(WeightsError, match=str(path)):
        analyze(str(path))
