"""Vendi score limits, fidelity, and the training-set measurement on small synthetic sets."""

import numpy as np
import pytest
import torch

from wdiv.diversity import (
    fidelity,
    measure_training_set,
    pixel_features,
    pre_logits_encoder,
    vendi_score,
)


@pytest.mark.parametrize("n,d", [(5, 40), (40, 8)])  # primal (n <= d) and dual (n > d) paths
def test_vendi_of_copies_is_one(n, d):
    v = np.random.default_rng(0).normal(size=d)
    X = np.tile(v, (n, 1)) * np.random.default_rng(1).uniform(0.5, 2, size=(n, 1))  # scale-free
    assert vendi_score(X) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("n,d", [(6, 6), (6, 50)])
def test_vendi_of_orthonormal_rows_is_n(n, d):
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, n)))
    assert vendi_score(q.T) == pytest.approx(n, rel=1e-9)


def test_vendi_dual_equals_primal():
    X = np.random.default_rng(0).normal(size=(30, 12))
    primal = np.exp(-_plogp(np.linalg.eigvalsh(_cos(X) / 30)))
    assert vendi_score(X) == pytest.approx(primal, rel=1e-9)
    # n orthonormal blocks repeated: 2 copies of 8 orthonormal rows in 8 dims (dual) -> 8
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))
    assert vendi_score(np.vstack([q, q])) == pytest.approx(8.0, rel=1e-9)


def _cos(X):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    return Xn @ Xn.T


def _plogp(eig):
    p = np.clip(eig, 0, None)
    p = p[p > 0]
    return float((p * np.log(p)).sum())


def test_vendi_zero_rows_are_one_shared_item():
    # all-zero rows (a blacked-out image) are identical to each other, orthogonal to the rest
    assert vendi_score(np.zeros((3, 4))) == pytest.approx(1.0, abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 3)))
    X = np.vstack([q.T, np.zeros((3, 5))])  # 3 orthonormal rows + 3 zero rows: K is block diag(I3, 1)
    expected = np.exp(-_plogp(np.array([1, 1, 1, 3]) / 6))
    assert vendi_score(X) == pytest.approx(expected, rel=1e-9)
    assert vendi_score(np.vstack([X, X[:1]])) != pytest.approx(vendi_score(X))  # not a dropped row


def test_vendi_rejects_non_finite_rows():
    with pytest.raises(ValueError, match="NaN"):
        vendi_score(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_fidelity_of_a_set_with_itself_is_one_and_orthogonal_is_zero():
    X = np.random.default_rng(0).normal(size=(20, 7))
    assert fidelity(X, X) == pytest.approx(1.0)
    assert fidelity(X, 3 * X) == pytest.approx(1.0)
    assert fidelity(X, -X) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="row-aligned"):
        fidelity(X, X[:5])


def test_pixel_features_resize_and_scale():
    imgs = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    f = pixel_features(imgs, size=4)
    assert f.shape == (2, 48)
    assert torch.allclose(f, torch.ones_like(f))


class _Images(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _toy(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _Images(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(n) % 3)


def _encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 32))


def test_measure_baseline_has_fidelity_one_and_restores_train_mode():
    real = _toy()
    enc = _encoder().train()
    out = measure_training_set(real=real, train=real, transform=None, encoder=enc, cfg={"sample_size": 40}, seed=0)
    assert set(out) == {"vendi_pixel", "vendi_embed", "rho", "weighted_vs", "n"}
    assert out["n"] == 40
    assert out["rho"] == pytest.approx(1.0)
    assert out["weighted_vs"] == pytest.approx(out["vendi_embed"])
    assert 1.0 < out["vendi_pixel"] <= 40
    assert enc.training  # mode restored


def test_measure_augmentation_lowers_fidelity_and_is_seeded():
    real = _toy()
    noise = lambda img: (img.float() / 255 + 0.3 * torch.randn(img.shape)).clamp(0, 1)  # noqa: E731
    enc = pre_logits_encoder(_encoder(), mean=(0.5,) * 3, std=(0.25,) * 3)
    kw = dict(real=real, train=real, transform=noise, encoder=enc, cfg={"sample_size": 30, "draws": 2})  # 2 draws: n = 60
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = measure_training_set(seed=0, **kw)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    b = measure_training_set(seed=0, **kw)
    c = measure_training_set(seed=1, **kw)
    assert a == b
    assert a != c
    assert a["n"] == 60  # 30 rows x 2 draws
    assert a["rho"] < 0.999
    plain = measure_training_set(**{**kw, "transform": None}, seed=0)
    assert a["vendi_pixel"] > plain["vendi_pixel"]  # noise spreads the pixel vectors apart


def test_measure_add_uses_only_appended_rows_for_fidelity():
    real = _toy(30)
    # "train" = real + 30 appended copies of real rows aligned to themselves: rho must be 1,
    # even though the appended rows are not the same as the first rows.
    train = _Images(torch.cat([real.images, real.images.flip(0)]), torch.cat([real.labels, real.labels.flip(0)]))
    train.real_index = np.concatenate([np.arange(30), np.arange(30)[::-1]])
    train.fidelity_rows = train.is_synthetic = np.r_[np.zeros(30, bool), np.ones(30, bool)]
    out = measure_training_set(real=real, train=train, transform=None, encoder=_encoder(), cfg={}, seed=0)
    assert out["rho"] == pytest.approx(1.0)
    # misaligned index: each appended row stands for another image; index alignment sees it,
    # nearest-neighbour alignment finds each copy's own original (a perfect "generator")
    train.real_index = np.arange(60) % 30
    out = measure_training_set(real=real, train=train, transform=None, encoder=_encoder(), cfg={"align": "index"}, seed=0)
    assert out["rho"] < 0.99
    out = measure_training_set(real=real, train=train, transform=None, encoder=_encoder(), cfg={"align": "nearest"}, seed=0)
    assert out["rho"] == pytest.approx(1.0)
    # a pixel-only measurement when no encoder is available
    out = measure_training_set(real=real, train=train, transform=None, encoder=None, cfg={}, seed=0)
    assert out["vendi_embed"] is None and out["rho"] is None and out["vendi_pixel"] > 1


def test_named_timm_encoder_resizes_to_its_input_size():
    real = _toy(12)
    cfg = {"encoder": "test_vit", "encoder_pretrained": False, "sample_size": 6}  # 160 x 160 input
    out = measure_training_set(real=real, train=real, transform=None, encoder=None, cfg=cfg, seed=0)
    assert out["n"] == 6 and out["rho"] == pytest.approx(1.0) and 1.0 <= out["vendi_embed"] <= 6


@pytest.mark.parametrize("key,value", [("sample_size", 0), ("draws", "two"), ("align", "random")])
def test_bad_diversity_option_names_its_key(key, value):
    real = _toy(10)
    with pytest.raises(ValueError, match=f"diversity.{key}: "):
        measure_training_set(real=real, train=real, transform=None, encoder=None, cfg={key: value}, seed=0)
