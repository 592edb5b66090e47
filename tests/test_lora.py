"""LoRA / PEFT adapter directories (wdiv.spectral.lora through `python -m wdiv.analyze`).

Adapters are written here in PEFT's saved layout (keys base_model.model.<module>.lora_A.weight
r x in, ...lora_B.weight out x r; adapter_config.json) from seeded random factors; the dense
product scale * B @ A is the reference for the eigenvalues, WeightWatcher's analysis of the dense
dW and of W + dW for the table rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import wdiv.analyze as cli
from wdiv.spectral.lora import LoraAdapter, lowrank_eigenvalues

# module -> (out, in) of its base weight; a tall, a wide and a small layer
MODULES = {"model.layers.0.self_attn.q_proj": (96, 64), "model.layers.0.mlp.down_proj": (48, 130),
           "model.layers.1.self_attn.v_proj": (40, 64)}
REL = 1e-10


def dense_evals(dw: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(dw, compute_uv=False) ** 2)


def make_base(folder, seed=0, extra=True):
    rng = np.random.default_rng(seed)
    state = {f"{m}.weight": torch.from_numpy(rng.standard_normal(s).astype(np.float32) / 8) for m, s in MODULES.items()}
    if extra:
        state["lm_head.weight"] = torch.from_numpy(rng.standard_normal((30, 64)).astype(np.float32))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    return state


def make_adapter(folder, r=4, alpha=8, seed=1, rank_pattern=None, alpha_pattern=None, use_rslora=False,
                 config_drop=(), tensors=None, **config):
    """An adapter dir; returns {module: (B, A, scale)} as float64 arrays."""
    rng = np.random.default_rng(seed)
    state, factors = {}, {}
    for module, (out, inp) in MODULES.items():
        short = module.rsplit(".", 1)[-1]
        rk = (rank_pattern or {}).get(short, r)
        al = (alpha_pattern or {}).get(short, alpha)
        a = rng.standard_normal((rk, inp)).astype(np.float32) / 4
        b = rng.standard_normal((out, rk)).astype(np.float32) / 4
        state[f"base_model.model.{module}.lora_A.weight"] = torch.from_numpy(a)
        state[f"base_model.model.{module}.lora_B.weight"] = torch.from_numpy(b)
        scale = al / (math.sqrt(rk) if use_rslora else rk)
        factors[module] = (b.astype(np.float64), a.astype(np.float64), scale)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "down_proj", "v_proj"],
           "use_rslora": use_rslora, "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {},
           "fan_in_fan_out": False, **config}
    for k in config_drop:
        cfg.pop(k)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors(state) if tensors else state, str(folder / "adapter_model.safetensors"))
    return factors


def run(*args):
    return cli.main([str(a) for a in args] + ["-q"])


# ------------------------------------------------------------------ eigenvalues


@pytest.mark.parametrize("out,inp,r", [(96, 64, 1), (96, 64, 8), (40, 130, 16), (30, 20, 24), (64, 64, 64)])
def test_factored_eigenvalues_equal_the_dense_products(out, inp, r):
    rng = np.random.default_rng(out * inp + r)
    b, a = rng.standard_normal((out, r)), rng.standard_normal((r, inp))
    ev = lowrank_eigenvalues(b, a, 0.37)
    ref = dense_evals(0.37 * b @ a)
    k = min(r, out, inp)
    assert len(ev) == min(out, inp) and np.all(ev[:len(ev) - k] == 0)
    np.testing.assert_allclose(ev[-k:], ref[-k:], rtol=REL)


@pytest.mark.parametrize("kw", [dict(r=4), dict(r=8, use_rslora=True), dict(r=2, rank_pattern={"down_proj": 6}),
                                dict(r=4, alpha=16, rank_pattern={"q_proj": 3}, alpha_pattern={"q_proj": 5},
                                     use_rslora=True)])
def test_adapter_esd_is_the_dense_updates(tmp_path, kw):
    factors = make_adapter(tmp_path / "ad", **kw)
    assert run(tmp_path / "ad", "--save-esd", "--min-evals", "1") == 0
    df = pd.read_csv(tmp_path / "ad" / "spectra.csv").set_index("longname")
    assert set(df.index) == set(MODULES) and (df.matrix == "delta").all()
    esd = np.load(tmp_path / "ad" / "esd.npz")
    for module, (b, a, scale) in factors.items():
        ref = dense_evals(scale * b @ a)
        ev = esd[module]
        k = b.shape[1]
        assert len(ev) == min(MODULES[module]) == df.loc[module, "num_evals"]
        np.testing.assert_allclose(ev[-k:], ref[-k:], rtol=REL)
        assert np.all(ev[:-k] == 0)
        assert df.loc[module, "matrix_rank"] == k
        assert (df.loc[module, "N"], df.loc[module, "M"]) == (max(MODULES[module]), min(MODULES[module]))


def test_fan_in_fan_out_and_embedding_layers_take_the_base_layout(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 50)).astype(np.float32), rng.standard_normal((70, 4)).astype(np.float32)
    ea, eb = rng.standard_normal((4, 300)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    save_file({"base_model.model.h.0.attn.c_attn.lora_A.weight": torch.from_numpy(a),
               "base_model.model.h.0.attn.c_attn.lora_B.weight": torch.from_numpy(b),
               "base_model.model.wte.lora_embedding_A": torch.from_numpy(ea),
               "base_model.model.wte.lora_embedding_B": torch.from_numpy(eb)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4, "fan_in_fan_out": True}))
    with LoraAdapter(folder) as adapter:
        conv1d, wte = adapter.layers["h.0.attn.c_attn.weight"], adapter.layers["wte.weight"]
        assert conv1d.shape == (50, 70) and wte.shape == (300, 32)  # GPT-2 Conv1D: in x out; Embedding: vocab x dim
        np.testing.assert_allclose(adapter.delta(conv1d), (b.astype(float) @ a).T, rtol=1e-12)
        np.testing.assert_allclose(adapter.delta(wte), (eb.astype(float) @ ea).T, rtol=1e-12)
    assert run(folder, "--min-evals", "1") == 0
    assert set(pd.read_csv(folder / "spectra.csv").longname) == {"h.0.attn.c_attn", "wte"}


def test_each_layer_takes_its_base_weights_orientation_whatever_the_global_flag(tmp_path):
    """PEFT orients per module type (Conv1D in x out, Linear out x in) but saves one fan_in_fan_out:
    with the base checkpoint, a GPT-2-style Conv1D layer (base stored in x out) under a config that
    says False, and a Linear layer under one that says True, both merge into W + dW as the base
    stores them; a square layer follows the config."""
    from wdiv.spectral import analyze

    rng = np.random.default_rng(5)
    shapes = {"h.0.attn.c_attn": ((64, 96), True), "h.0.mlp.c_fc": ((40, 64), False), "h.0.attn.c_proj": ((64, 64), True)}
    base, adapter, merged = {}, {}, {}
    for module, ((rows, cols), conv1d) in shapes.items():
        inp, out = (rows, cols) if conv1d else (cols, rows)
        w = rng.standard_normal((rows, cols)).astype(np.float32) / 8
        a = rng.standard_normal((4, inp)).astype(np.float32) / 4
        b = rng.standard_normal((out, 4)).astype(np.float32) / 4
        base[f"{module}.weight"] = torch.from_numpy(w)
        adapter[f"base_model.model.{module}.lora_A.weight"] = torch.from_numpy(a)
        adapter[f"base_model.model.{module}.lora_B.weight"] = torch.from_numpy(b)
        dw = 2.0 * b.astype(np.float64) @ a
        merged[f"{module}.weight"] = w.astype(np.float64) + (dw.T if conv1d else dw)
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    for flag in (False, True):
        folder = tmp_path / f"ad_{flag}"
        folder.mkdir()
        save_file(adapter, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "fan_in_fan_out": flag}))
        assert run(folder, "--base", tmp_path / "base", "--min-evals", "1") == 0
        rows = pd.read_csv(folder / "spectra.csv")
        rows = rows[rows["matrix"] == "merged"].set_index("longname")
        expected = analyze({k: torch.from_numpy(v) for k, v in merged.items()}, min_evals=1).set_index("longname")
        for module in ("h.0.attn.c_attn", "h.0.mlp.c_fc"):  # non-square: the base decides
            np.testing.assert_allclose(rows.loc[module, "log_spectral_norm"], expected.loc[module, "log_spectral_norm"],
                                       rtol=1e-9, err_msg=f"{module} with fan_in_fan_out={flag}")
        square = rows.loc["h.0.attn.c_proj", "log_spectral_norm"]
        agrees = math.isclose(square, expected.loc["h.0.attn.c_proj", "log_spectral_norm"], rel_tol=1e-9)
        assert agrees == flag  # a square Conv1D layer: only the config can tell


# ------------------------------------------------------------------ WeightWatcher on the dense matrices


def ww_rows(mats: list[np.ndarray]) -> list[dict]:
    ww = pytest.importorskip("weightwatcher")
    layers = []
    for w in mats:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        layers.append(lin)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        details = ww.WeightWatcher(model=torch.nn.Sequential(*layers)).analyze(mp_fit=True)
    assert len(details) == len(mats)
    return details.to_dict("records")


PARITY = ["alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "lambda_max", "log_spectral_norm", "norm",
          "log_norm", "alpha_weighted", "log_alpha_norm", "stable_rank", "entropy", "matrix_rank"]
MP = ["sigma_mp", "bulk_max", "bulk_min", "mp_softrank", "num_spikes"]


def _assert_rows_match(ours: pd.DataFrame, refs: list[dict], cols):
    bad = []
    for (module, row), ref in zip(ours.iterrows(), refs):
        assert (row.N, row.M, row.num_evals) == (ref["N"], ref["M"], ref["num_evals"]), module
        for col in cols:
            a, b = float(row[col]), float(ref[col])
            if not abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-300):
                bad.append((module, col, a, b))
    assert not bad, bad


def test_merged_rows_equal_weightwatcher_on_w_plus_dw(tmp_path):
    base = make_base(tmp_path / "base")
    factors = make_adapter(tmp_path / "ad", r=6, use_rslora=True, rank_pattern={"v_proj": 3})
    assert run(tmp_path / "ad", "--base", tmp_path / "base", "--min-evals", "1") == 0
    df = pd.read_csv(tmp_path / "ad" / "spectra.csv")
    merged = df[df.matrix == "merged"].set_index("longname").loc[list(MODULES)]
    dense = [base[f"{m}.weight"].double().numpy() + s * b @ a for m, (b, a, s) in factors.items()]
    _assert_rows_match(merged, ww_rows(dense), PARITY + MP)
    # deltas: merged rows against the base W (spectra_base.csv), none on the dW rows
    base_df = pd.read_csv(tmp_path / "ad" / "spectra_base.csv").set_index("longname")
    q = "model.layers.0.self_attn.q_proj"
    assert merged.loc[q, "delta_alpha"] == pytest.approx(merged.loc[q, "alpha"] - base_df.loc[q, "alpha"])
    assert df[df.matrix == "delta"].delta_alpha.isna().all()
    ids = dict(zip(base_df.index, base_df.layer_id))
    assert all(ids[m] == i for m, i in zip(df.longname, df.layer_id))  # the base checkpoint's layer ids
    summary = json.loads((tmp_path / "ad" / "spectra_summary.json").read_text())
    assert summary["alpha"] == pytest.approx(df[df.matrix == "delta"].alpha.mean())
    assert summary["merged"]["alpha"] == pytest.approx(merged.alpha.mean())
    assert run(tmp_path / "ad", "--base", tmp_path / "base", "--min-evals", "1") == 0  # up to date: not redone
    assert (tmp_path / "ad" / "spectra.csv").read_text() == df.to_csv(index=False)


def test_delta_rows_equal_weightwatcher_on_the_dense_dw(tmp_path):
    """The M - r zero eigenvalues are counted as a dense analysis counts them (num_evals, entropy).

    WeightWatcher's analyze() rounds every weight to float32, so on the dense dW it sees rounding
    noise (~1e-7 sigma_max) where the zeros are, and counts it in the rank; rank and entropy are
    therefore compared with WeightWatcher's own functions on the exact (float64) spectrum."""
    from weightwatcher.RMT_Util import matrix_entropy, matrix_rank

    factors = make_adapter(tmp_path / "ad", r=5)
    assert run(tmp_path / "ad", "--min-evals", "1", "--no-mp-fit") == 0
    df = pd.read_csv(tmp_path / "ad" / "spectra.csv").set_index("longname").loc[list(MODULES)]
    dense = [s * b @ a for b, a, s in factors.values()]
    _assert_rows_match(df, ww_rows(dense), [c for c in PARITY if c not in ("entropy", "matrix_rank")])
    for (module, row), w in zip(df.iterrows(), dense):
        sv = np.linalg.svd(w, compute_uv=False)
        assert row.matrix_rank == matrix_rank(sv, max(w.shape)) == 5
        assert row.entropy == pytest.approx(matrix_entropy(sv, max(w.shape)), rel=1e-6)


def test_base_auto_reads_base_model_name_or_path(tmp_path):
    make_base(tmp_path / "base")
    make_adapter(tmp_path / "ad", base_model_name_or_path="../base")
    assert run(tmp_path / "ad", "--base", "--min-evals", "1") == 0
    assert set(pd.read_csv(tmp_path / "ad" / "spectra.csv").matrix) == {"delta", "merged"}


def test_adapters_are_found_in_a_tree(tmp_path):
    make_adapter(tmp_path / "zoo" / "a1")
    make_adapter(tmp_path / "zoo" / "a2", seed=2)
    (tmp_path / "zoo" / "stray").mkdir()
    (tmp_path / "zoo" / "stray" / "adapter_config.json").write_text("{}")  # no weights beside it: not a target
    assert run(tmp_path / "zoo", "--min-evals", "1") == 0
    assert (tmp_path / "zoo" / "a1" / "spectra.csv").is_file() and (tmp_path / "zoo" / "a2" / "spectra.csv").is_file()


# ------------------------------------------------------------------ broken adapters


def _drop_a(state):
    return {k: v for k, v in state.items() if not k.endswith("q_proj.lora_A.weight")}


def _bad_shape(state):
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
    return {**state, key: state[key][:, :3].contiguous()}


@pytest.mark.parametrize("kw,file,words", [
    (dict(config_drop=("r",)), "adapter_config.json", "r missing"),
    (dict(config_drop=("lora_alpha",)), "adapter_config.json", "lora_alpha missing"),
    (dict(tensors=_bad_shape), "adapter_model.safetensors", "shapes do not match"),
    (dict(tensors=_drop_a), "adapter_model.safetensors", "has no matching lora_A"),
    (dict(rank_pattern={"q_proj": 2}, tensors=lambda s: {**s, **{k: v for k, v in make_state_r4().items()}}),
     "adapter_config.json", "r=2 for model.layers.0.self_attn.q_proj"),
    (dict(use_dora=True), "adapter_config.json", "use_dora"),
])
def test_a_broken_adapter_is_one_line_naming_the_file(tmp_path, capsys, kw, file, words):
    make_adapter(tmp_path / "ad", **kw)
    assert run(tmp_path / "ad") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(tmp_path / "ad" / file) in err[0] and words in err[0], err
    assert not (tmp_path / "ad" / "spectra.csv").exists()


def make_state_r4():
    """q_proj's factors at rank 4 (what a config claiming rank 2 for it does not describe)."""
    rng = np.random.default_rng(9)
    out, inp = MODULES["model.layers.0.self_attn.q_proj"]
    return {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.from_numpy(
                rng.standard_normal((4, inp)).astype(np.float32)),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.from_numpy(
                rng.standard_normal((out, 4)).astype(np.float32))}


def test_a_base_without_the_adapted_layer_is_named(tmp_path, capsys):
    state = make_base(tmp_path / "base")
    state.pop("model.layers.0.mlp.down_proj.weight")
    save_file(state, str(tmp_path / "base" / "model.safetensors"))
    make_adapter(tmp_path / "ad")
    assert run(tmp_path / "ad", "--base", tmp_path / "base") == 1
    err = capsys.readouterr().err
    assert "has no model.layers.0.mlp.down_proj.weight" in err and str(tmp_path / "base") in err


def test_conv_adapters_and_dense_options_equal_the_dense_update(tmp_path):
    """A conv LoRA (lora_A r x in x kh x kw, lora_B out x r x 1 x 1), and --farms / --randomize
    (which need dW's entries) on a linear one: the rows of the dense update's own analysis."""
    from wdiv.spectral import analyze
    from wdiv.spectral.lora import analyze_adapter

    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal((32, 3, 1, 1)).astype(np.float32)
    folder = tmp_path / "conv"
    folder.mkdir()
    save_file({"base_model.model.features.0.lora_A.weight": torch.from_numpy(a),
               "base_model.model.features.0.lora_B.weight": torch.from_numpy(b)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 3, "lora_alpha": 6}))
    dense = torch.from_numpy(2.0 * np.einsum("or,rikl->oikl", b[:, :, 0, 0].astype(float), a.astype(float)))
    ours = analyze_adapter(folder).iloc[0]
    ref = analyze({"features.0.weight": dense}).iloc[0]
    assert ours.longname == "features.0" and ours.rf == 9 and ours.matrix == "delta"
    for col in ("num_evals", "lambda_max", "norm", "alpha", "matrix_rank", "entropy"):
        assert ours[col] == pytest.approx(ref[col], rel=1e-9), col

    factors = make_adapter(tmp_path / "lin", r=6)
    ours = analyze_adapter(tmp_path / "lin", farms=True, farms_window=20, randomize=True, min_evals=1)
    b, a, s = factors["model.layers.0.self_attn.q_proj"]
    ref = analyze({"model.layers.0.self_attn.q_proj.weight": torch.from_numpy(s * b @ a)},
                  farms=True, farms_window=20, randomize=True, min_evals=1)
    row = ours.set_index("longname").loc["model.layers.0.self_attn.q_proj"]
    assert row.alpha_farms == pytest.approx(ref.alpha_farms.iloc[0], rel=1e-9)
    assert np.isfinite(row.rand_distance)


def _nan_in_q_proj(state):
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    bad = state[key].clone()
    bad[0, 0] = float("nan")
    return {**state, key: bad}


def test_a_non_finite_factor_fails_its_layer_not_the_adapter(tmp_path):
    """NaN in one layer's lora_B: that row is failed (exit 1, as any failed layer), every other
    adapted layer is analysed and the table written."""
    make_adapter(tmp_path / "ad", tensors=_nan_in_q_proj)
    assert run(tmp_path / "ad") == 1
    df = pd.read_csv(tmp_path / "ad" / "spectra.csv").set_index("longname")
    assert df.loc["model.layers.0.self_attn.q_proj", "status"] == "failed"
    assert (df.drop(index="model.layers.0.self_attn.q_proj")["status"] == "success").all()


def test_the_adapter_hash_covers_its_config(tmp_path):
    """Same factors, another lora_alpha: another dW, so another sha256 (the population table's)."""
    from wdiv.analysis_targets import checkpoint_sha256

    make_adapter(tmp_path / "a", alpha=8)
    make_adapter(tmp_path / "b", alpha=16)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    assert checkpoint_sha256(tmp_path / "a") != checkpoint_sha256(tmp_path / "b")
    make_adapter(tmp_path / "c", alpha=8)
    assert checkpoint_sha256(tmp_path / "a") == checkpoint_sha256(tmp_path / "c")
