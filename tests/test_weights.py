"""Weights in -> layer selection and matrices: formats, WeightWatcher's selection rules, bad files."""

import json
import logging
import warnings

import pytest
import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from wdiv.spectral.weights import (WeightsError, natural_key, open_weights, select_layers,
                                   to_matrices)


class Custom2D(nn.Module):
    """A module whose class name says nothing WeightWatcher recognises, holding a 2-D weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(32, 16))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.conv = nn.Conv2d(8, 16, 3)
        self.small = nn.Conv2d(3, 4, 1)  # 3 evals pooled: below min_evals
        self.norm = nn.LayerNorm(24)
        self.fc = nn.Linear(24, 40)
        self.head = nn.Linear(40, 5)  # 5 evals: below min_evals
        self.custom = Custom2D()
        self.conv1d = nn.Conv1d(8, 8, 3)  # rank-3 kernel: skipped by wdiv


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return Tiny()


def names(specs):
    return [s.longname for s in specs]


def test_module_rule_matches_weightwatcher_and_state_dict_rule_differs_as_documented(tiny):
    ww = pytest.importorskip("weightwatcher")
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    try:
        details = ww.WeightWatcher(model=tiny).describe()
    finally:
        logging.disable(logging.NOTSET)
    ww_names = set(details["longname"]) - {"conv1d"}  # WeightWatcher stacks the rank-3 kernel; wdiv skips it
    from_module = select_layers(open_weights(tiny))
    assert set(names(from_module)) == ww_names == {"conv", "emb", "fc"}
    # A state dict has no module types: the custom 2-D weight is then a dense layer.
    from_state = select_layers(open_weights(tiny.state_dict()))
    assert set(names(from_state)) == {"conv", "emb", "fc", "custom"}


def test_layer_ids_and_names_agree_between_module_and_saved_file(tiny, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    a = {s.longname: (s.layer_id, s.name, s.shape) for s in select_layers(open_weights(tiny.state_dict()))}
    b = {s.longname: (s.layer_id, s.name, s.shape) for s in select_layers(open_weights(path))}
    assert a == b
    assert sorted(["blocks.10.w", "blocks.2.w", "a"], key=natural_key) == ["a", "blocks.2.w", "blocks.10.w"]


def test_conv_kernel_is_sliced_per_kernel_position_with_n_ge_m(tiny):
    src = open_weights(tiny.state_dict())
    spec = next(s for s in select_layers(src) if s.longname == "conv")
    w = tiny.conv.weight.detach()
    mats = to_matrices(spec, w)
    assert spec.rf == 9 and spec.matrix_shape == (16, 8) and mats.shape == (9, 16, 8)
    np.testing.assert_array_equal(mats[4], w[:, :, 1, 1].numpy())  # slice (i=1, j=1), out x in
    wide = nn.Linear(100, 20).weight.detach()  # stored 20 x 100 -> analysed as 100 x 20
    spec_fc = next(s for s in select_layers(open_weights({"x.weight": wide})))
    assert to_matrices(spec_fc, wide).shape == (1, 100, 20)


def test_filters_pool_versus_per_slice_and_regex():
    sd = {"c.weight": torch.randn(16, 4, 3, 3), "big.weight": torch.randn(60000, 12),
          "zero.weight": torch.empty(0, 20),
          "a.weight": torch.randn(30, 20), "b.weight": torch.randn(30, 20)}
    src = open_weights(sd)
    # conv: M=4, rf=9 -> 36 evals pooled (kept), 4 per slice (dropped); big: N > max_N
    assert names(select_layers(src)) == ["a", "b", "c"]
    assert names(select_layers(src, pool=False)) == ["a", "b"]
    assert names(select_layers(src, max_evals=30)) == ["a", "b"]
    assert names(select_layers(src, max_N=100000)) == ["a", "b", "big", "c"]
    assert names(select_layers(src, include=r"^[ab]$", exclude="b")) == ["a"]


def test_sharded_checkpoint_reads_every_shard(tmp_path):
    torch.manual_seed(0)
    sd = {f"l{i}.weight": torch.randn(20, 12) for i in range(4)}
    shards = {"model-00001-of-00002.safetensors": ["l0.weight", "l1.weight"],
              "model-00002-of-00002.safetensors": ["l2.weight", "l3.weight"]}
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(tmp_path / fname))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for where in (tmp_path, tmp_path / "model.safetensors.index.json"):
        src = open_weights(where)
        assert names(select_layers(src)) == ["l0", "l1", "l2", "l3"]
        np.testing.assert_array_equal(src.tensor("l3.weight"), sd["l3.weight"].numpy())


def test_torch_state_dict_file_and_nested_checkpoint(tmp_path):
    sd = {"fc.weight": torch.randn(20, 12), "fc.bias": torch.randn(20)}
    torch.save(sd, tmp_path / "a.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "b.pth")
    for f in ("a.pt", "b.pth"):
        src = open_weights(tmp_path / f)
        np.testing.assert_array_equal(src.tensor("fc.weight"), sd["fc.weight"].numpy())


class Evil:
    """Unpickling this would run code (create a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_needs_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(str(marker))}, tmp_path / "evil.bin")
    with pytest.raises(WeightsError, match=r"evil\.bin.*refused"):
        open_weights(tmp_path / "evil.bin")
    assert not marker.exists()


def test_bad_files_give_one_clear_error_naming_the_file(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    good = tmp_path / "good.safetensors"
    save_file({"fc.weight": torch.randn(64, 64)}, str(good))
    (tmp_path / "trunc.safetensors").write_bytes(good.read_bytes()[:-100])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "nothing").mkdir()
    for bad, why in [("empty.safetensors", "empty"), ("trunc.safetensors", "safetensors"),
                     ("garbage.pt", "^not a safetensors or PyTorch file: "), ("nothing", "no weights"), ("missing.pt", "no such")]:
        with pytest.raises(WeightsError, match=why) as info:
            open_weights(tmp_path / bad)
        assert bad in str(info.value) and "\n" not in str(info.value)
