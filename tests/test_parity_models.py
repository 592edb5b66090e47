"""Whole-model parity with WeightWatcher 0.7.7 on the same weights (timm ViT, ResNet, Pareto MLP).

Same set of layers; alpha, xmin, D, log_norm, log_spectral_norm, stable_rank, entropy within
1e-6 relative on every layer; num_spikes equal on >= 90 % of layers.
"""

import contextlib
import io
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from wdiv.spectral import analyze

ww = pytest.importorskip("weightwatcher")
timm = pytest.importorskip("timm")

EXACT = ["alpha", "xmin", "D", "log_norm", "log_spectral_norm", "stable_rank", "entropy"]


def ww_details(model, mp_fit=True, **kwargs):
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return ww.WeightWatcher(model=model).analyze(mp_fit=mp_fit, **kwargs)
    finally:
        logging.disable(logging.NOTSET)


def assert_parity(model, **kwargs):
    theirs = ww_details(model, **kwargs).set_index("longname")
    ours = analyze(model, **kwargs).set_index("longname")
    assert sorted(ours.index) == sorted(theirs.index)
    theirs = theirs.loc[ours.index]
    assert (ours.status == "success").all()
    for col in EXACT:
        np.testing.assert_allclose(ours[col].astype(float), theirs[col].astype(float), rtol=1e-6, atol=0,
                                   err_msg=col)
    np.testing.assert_array_equal(ours.num_evals, theirs.num_evals)
    same_spikes = (ours.num_spikes.astype(float).to_numpy() == theirs.num_spikes.astype(float).to_numpy()).mean()
    assert same_spikes >= 0.9, f"num_spikes equal on {same_spikes:.0%} of layers"
    return ours, theirs


def test_parity_vit():
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10).eval()
    ours, _ = assert_parity(model)
    assert len(ours) == 2 * 4 + 2  # qkv, proj, fc1, fc2 per block + patch embedding + head


def small_resnet():
    """A timm ResNet with ResNet-18's layout of layer types but narrow stages (fast to analyse)."""
    return timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10,
                                     stem_width=16, channels=(16, 32, 48, 64)).eval()


def test_parity_resnet():
    torch.manual_seed(0)
    ours, _ = assert_parity(small_resnet())
    assert (ours.rf == 9).sum() == 8 and "conv1" in ours.index  # 3x3 convs pooled, 7x7 stem


def pareto_mlp(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(300, 100), (200, 200), (120, 400), (500, 150), (64, 256)]
    layers = []
    for i, (out_f, in_f) in enumerate(shapes):
        lin = nn.Linear(in_f, out_f)
        mu = 0.8 + 0.4 * i  # tail index of the entries: 0.8 ... 2.4
        u = torch.rand(out_f, in_f, generator=g, dtype=torch.float64)
        sign = torch.where(torch.rand(out_f, in_f, generator=g) < 0.5, -1.0, 1.0)
        with torch.no_grad():
            lin.weight.copy_((u ** (-1.0 / mu) * sign).float())
        layers.append(lin)
    return nn.Sequential(*layers)


def test_parity_pareto_heavy_tailed_linear_layers():
    ours, _ = assert_parity(pareto_mlp())
    # heavier-tailed entries give smaller alpha (alpha ~ 1 + mu/2 for mu < 2)
    assert ours.alpha.iloc[0] < ours.alpha.iloc[-2]


def test_parity_per_slice_resnet():
    torch.manual_seed(1)
    model = small_resnet()
    theirs = ww_details(model, mp_fit=False, pool=False)
    ours = analyze(model, pool=False, mp_fit=False)
    assert len(ours) == len(theirs)
    key = ["longname", "slice_id"]
    theirs = theirs.set_index(key).loc[ours.set_index(key).index]
    for col in ("alpha", "log_norm", "log_spectral_norm", "stable_rank"):
        ok = theirs[col].to_numpy() != -1
        np.testing.assert_allclose(ours[col].to_numpy()[ok], theirs[col].to_numpy()[ok], rtol=1e-6, err_msg=col)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
def test_parity_full_size_timm_models(name):
    torch.manual_seed(0)
    assert_parity(timm.create_model(name, pretrained=False).eval())
