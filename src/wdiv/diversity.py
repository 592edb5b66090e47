"""How diverse is a training set, and how far is it from the real data?

The study's diversity metric (Friedman & Dieng's Vendi score) and its fidelity discount:

* ``vendi_score(X)``: exp of the Shannon entropy of the eigenvalues of ``K / n``, where ``K`` is
  the cosine-similarity kernel of the rows of ``X``. It counts "effective distinct rows":
  n copies of one row score 1, n orthogonal rows score n.
* pixel VS: rows are images resized to ``pixel_size`` x ``pixel_size`` and flattened ([0, 1]).
* embedding VS: rows are features of an encoder: the pre-logits of the pretrained model the run
  starts from, or a named timm encoder (``diversity.encoder``).
* fidelity ``rho = <E_real, E_mod>_F / (||E_real||_F ||E_mod||_F)`` between row-aligned
  embedding matrices of the real rows and their modified versions (augmented draws, or the
  synthetic images standing in for them), and ``weighted_vs = vendi_embed * rho``.

How rows are aligned. A real row (possibly augmented) is compared with its own un-augmented
image: row i is ``real[train.real_index[i]]`` (identity when the training set has no such
attribute). A generated row (``train.is_synthetic``) has no real original; with
``align: nearest`` (default) it is compared with the most cosine-similar real image of its class
(in embedding space, among up to ``align_pool`` real images drawn by seed), so a generator that
reproduced real images would score 1; ``align: index`` uses ``train.real_index`` instead (the
replaced image for ``replace``, a seeded same-class image for ``add``). Rho is taken over
``train.fidelity_rows``: all rows by default, only the appended rows for ``add`` (with or without the filter).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""Maps a float batch [B, C, H, W] of [0, 1] pixels to features [B, D]."""

DEFAULTS: dict[str, Any] = {
    "sample_size": 500,  # training rows measured; bounds the cost on big sets
    "draws": 1,  # augmented draws per sampled row: 1 keeps n equal across arms (cheapest)
    "pixel_size": 32,  # images are resized to this square before the pixel VS
    "batch_size": 256,
    "encoder": None,  # None: the run's starting model; else a timm model name
    "encoder_pretrained": True,  # for a named timm encoder (needs its weights cached or a hub)
    "align": "nearest",  # generated rows' real reference: nearest same-class real image | index
    "align_pool": 1000,  # real images searched for the nearest one
    "ngram": 1,  # text: order of the word n-grams counted for vendi_ngram
}

WORD = re.compile(r"\w+|[^\w\s]")


def vendi_score(X: np.ndarray | torch.Tensor) -> float:
    """Vendi score of the rows of ``X`` under the cosine kernel.

    The nonzero eigenvalues of ``K / n = Xn Xn^T / n`` equal those of ``Xn^T Xn / n`` (d x d), so
    the smaller of the two Gram matrices is decomposed (float64, torch: it honours the run's
    ``torch.set_num_threads``).

    Cosine similarity is undefined for an all-zero row (an augmentation can black out a digit), so
    zero rows get the convention that keeps the kernel a valid similarity (k(x, x) = 1): they are
    identical to each other and orthogonal to every nonzero row, i.e. they share one extra
    direction. ``n`` zero rows alone therefore score 1, like ``n`` copies of one vector.
    """
    X = torch.as_tensor(X).detach().to("cpu", torch.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"vendi_score: need a non-empty 2-D matrix, got shape {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("vendi_score: rows contain NaN or Inf")
    norms = torch.linalg.vector_norm(X, dim=1)
    zero = norms == 0
    if bool(zero.any()):
        X = torch.cat([X, zero.to(X.dtype)[:, None]], dim=1)
        norms = torch.where(zero, torch.ones_like(norms), norms)
    Xn = X / norms[:, None]
    n, d = Xn.shape
    gram = Xn @ Xn.T if n <= d else Xn.T @ Xn
    return float(np.exp(_entropy(torch.linalg.eigvalsh(gram / n).numpy())))


def _entropy(eigenvalues: np.ndarray) -> float:
    """Shannon entropy of a spectrum read as a distribution (tiny negatives clipped, 0 log 0 = 0)."""
    p = np.clip(eigenvalues, 0.0, None)
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def fidelity(real: np.ndarray | torch.Tensor, modified: np.ndarray | torch.Tensor) -> float:
    """Normalised Frobenius inner product of two row-aligned matrices (1 when identical)."""
    a = np.asarray(real, dtype=np.float64)
    b = np.asarray(modified, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"fidelity: row-aligned matrices must match, got {a.shape} vs {b.shape}")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0:
        raise ValueError("fidelity: a matrix is all zeros")
    return float(np.sum(a * b) / denom)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def pixel_features(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """[N, C, H, W] images -> [N, C*size*size] rows of [0, 1] pixels (antialiased resize)."""
    x = to_unit_float(images)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.flatten(1)


def pixel_vendi(images: torch.Tensor, size: int = 32) -> float:
    """Vendi score of images as resized, flattened pixel vectors."""
    return vendi_score(pixel_features(images, size))


def pre_logits_encoder(
    model: torch.nn.Module,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    size: int | None = None,
) -> Encoder:
    """Encoder from a classifier: resize, normalise, then take the features the head would see.

    timm models expose ``forward_features`` + ``forward_head(pre_logits=True)``; any other module
    is used as is. ``mean``/``std`` default to the model's timm ``pretrained_cfg``; ``size``
    (the model's input size) resizes other images first.
    """
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    mean_t = torch.tensor(mean if mean is not None else pcfg.get("mean", (0.0, 0.0, 0.0)))
    std_t = torch.tensor(std if std is not None else pcfg.get("std", (1.0, 1.0, 1.0)))

    def encode(x: torch.Tensor) -> torch.Tensor:
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - mean_t.view(1, -1, 1, 1).to(x)) / std_t.view(1, -1, 1, 1).to(x)
        if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
            return model.forward_head(model.forward_features(x), pre_logits=True)
        return model(x)

    encode.module = model  # type: ignore[attr-defined]
    return encode


def timm_encoder(name: str, pretrained: bool = True, device: torch.device | str = "cpu") -> Encoder:
    """A named timm model as a pre-logits encoder, sized and normalised as its pretrained config says."""
    import timm

    model = timm.create_model(name, pretrained=pretrained, num_classes=0).eval().to(device)
    size = int((model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])
    return pre_logits_encoder(model, size=size)


def _as_encoder(encoder: Any, cfg: Mapping[str, Any]) -> Encoder | None:
    if cfg.get("encoder"):  # a named encoder, on the device of the run's model
        return timm_encoder(str(cfg["encoder"]), bool(cfg.get("encoder_pretrained", True)), _device(encoder))
    if encoder is None:
        return None
    if isinstance(encoder, torch.nn.Module):
        return pre_logits_encoder(encoder)
    if callable(encoder):
        return encoder
    raise TypeError(f"diversity: encoder must be an nn.Module or a callable, got {type(encoder)}")


def _device(encoder: Any) -> torch.device:
    module = getattr(encoder, "module", encoder)
    params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    return params[0].device if params else torch.device("cpu")


@torch.no_grad()
def embed(encoder: Encoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features of ``images`` in eval mode (the module's train/eval mode is restored after)."""
    module = getattr(encoder, "module", encoder)
    was_training = getattr(module, "training", False)
    device = _device(encoder)
    if isinstance(module, torch.nn.Module):
        module.eval()
    try:
        out = [
            encoder(to_unit_float(images[i : i + batch_size]).to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        if isinstance(module, torch.nn.Module):
            module.train(was_training)
    return torch.cat(out).flatten(1)


def _stack(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    images = [dataset[int(i)][0] for i in indices]
    if len({tuple(im.shape[-2:]) for im in images}) > 1:  # image folders keep each stored size
        from torchvision.transforms.v2.functional import resize

        images = [resize(im, list(images[0].shape[-2:]), antialias=True) for im in images]
    return torch.stack(images)


def _labels(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and len(labels) == len(dataset):
        return labels[torch.as_tensor(indices, dtype=torch.long)]
    return torch.tensor([int(dataset[int(i)][1]) for i in indices], dtype=torch.long)


def _references(embed_rows, real, train, rows, real_index, is_syn, first_draw, augmented, opts, rng) -> torch.Tensor:
    """Embeddings of the real row each measured row is compared with (row-aligned, see above).

    ``embed_rows(dataset, indices)`` embeds rows of a dataset (images or texts alike).
    """
    ref = first_draw.clone()  # an un-augmented real row is its own reference
    syn = is_syn[rows]
    own = ~syn if augmented else np.zeros(len(rows), dtype=bool)
    by_index = syn.copy() if opts["align"] == "index" else np.zeros(len(rows), dtype=bool)
    if opts["align"] == "nearest" and syn.any():
        pool = np.sort(rng.choice(len(real), size=min(int(opts["align_pool"]), len(real)), replace=False))
        pool_emb = F.normalize(embed_rows(real, pool), dim=1)
        pool_lab = _labels(real, pool)
        sims = F.normalize(first_draw[torch.from_numpy(syn)], dim=1) @ pool_emb.T
        same = _labels(train, rows[syn])[:, None] == pool_lab[None, :]
        best = sims.masked_fill(~same, -torch.inf).argmax(1)
        found = same.any(1)
        ref[torch.from_numpy(np.flatnonzero(syn)[found.numpy()])] = embed_rows(real, pool[best[found].numpy()])
        by_index[np.flatnonzero(syn)[~found.numpy()]] = True  # no real row of that class in the pool
    redo = own | by_index
    if redo.any():
        ref[torch.from_numpy(redo)] = embed_rows(real, real_index[rows[redo]])
    return ref


def _apply(transform: Callable | None, images: torch.Tensor, seed: int, draw: int) -> torch.Tensor:
    """One seeded augmented draw, without disturbing the caller's global RNG streams."""
    if transform is None:
        return images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + draw)
        out = [transform(img) for img in images]
    sizes = {tuple(o.shape[-2:]) for o in out}
    if len(sizes) > 1:  # e.g. random-resized crops of different sizes
        h, w = images.shape[-2:]
        out = [F.interpolate(to_unit_float(o)[None], size=(h, w), mode="bilinear")[0] for o in out]
    return torch.stack([to_unit_float(o) for o in out])


def _sample_rows(real: Any, train: Any, opts: Mapping[str, Any], rng: np.random.Generator):
    """(rows for VS, rows for rho, real_index, is_synthetic) of ``train``, drawn by ``rng``."""
    n_train = len(train)
    vs_rows = np.sort(rng.choice(n_train, size=min(int(opts["sample_size"]), n_train), replace=False))
    real_index = np.asarray(getattr(train, "real_index", np.arange(n_train)))
    if len(real_index) != n_train or (real_index.max(initial=0) >= len(real)):
        raise ValueError("diversity: train has no real_index aligning its rows with the real set")
    is_syn = np.asarray(getattr(train, "is_synthetic", np.zeros(n_train, dtype=bool)), dtype=bool)
    fid_mask = np.asarray(getattr(train, "fidelity_rows", np.ones(n_train, dtype=bool)), dtype=bool)
    if fid_mask.all():
        rho_rows = vs_rows
    else:
        candidates = np.flatnonzero(fid_mask)
        k = min(int(opts["sample_size"]), len(candidates))
        rho_rows = np.sort(rng.choice(candidates, size=k, replace=False))
    return vs_rows, rho_rows, real_index, is_syn


def measure_training_set(
    *,
    real: Any,
    train: Any,
    transform: Callable | None,
    encoder: Any,
    cfg: Mapping[str, Any] | None,
    seed: int,
) -> dict[str, float | int | None]:
    """Diversity of what the model is trained on: ``{vendi_pixel, vendi_embed, rho, weighted_vs, n}``.

    ``real``/``train`` yield ``(uint8 [C, H, W], label)``: the real training split and the set
    actually trained on (after synthetic mixing). ``transform`` is the train-time augmentation
    (uint8 image -> uint8 or [0, 1] float image, before normalisation) or None; it is applied
    ``draws`` times with seeds derived from ``seed``. ``encoder`` is the starting model (an
    ``nn.Module``, normalised by its timm ``pretrained_cfg``), a callable from
    :data:`Encoder`, or None (then only ``vendi_pixel`` is filled). ``n`` counts the measured rows.
    """
    opts = _options(cfg)
    if getattr(train, "modality", "image") == "text":
        return measure_text_set(real=real, train=train, encoder=getattr(encoder, "module", encoder), cfg=cfg, seed=seed)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    vs_rows, rho_rows, real_index, is_syn = _sample_rows(real, train, opts, rng)

    draws = int(opts["draws"]) if transform is not None else 1
    rows = np.union1d(vs_rows, rho_rows)
    raw = _stack(train, rows)
    modified = [_apply(transform, raw, seed, d) for d in range(draws)]
    where_vs = np.searchsorted(rows, vs_rows)
    where_rho = np.searchsorted(rows, rho_rows)

    vs_images = torch.cat([m[where_vs] for m in modified])
    result: dict[str, float | int | None] = {
        "vendi_pixel": pixel_vendi(vs_images, int(opts["pixel_size"])),
        "vendi_embed": None,
        "rho": None,
        "weighted_vs": None,
        "n": int(len(vs_images)),
    }
    enc = _as_encoder(encoder, opts)
    if enc is not None:
        bs = int(opts["batch_size"])
        emb = [embed(enc, m, bs) for m in modified]
        result["vendi_embed"] = vendi_score(torch.cat([e[where_vs] for e in emb]))
        if len(rho_rows):
            mod_emb = torch.cat([e[where_rho] for e in emb])
            embed_rows = lambda ds, idx: embed(enc, _stack(ds, idx), bs)  # noqa: E731
            ref = _references(embed_rows, real, train, rho_rows, real_index, is_syn, emb[0][where_rho], transform is not None, opts, rng)
            result["rho"] = fidelity(ref.repeat(draws, 1), mod_emb)
            result["weighted_vs"] = result["vendi_embed"] * result["rho"]
    log.info(
        "diversity: vendi_pixel=%.2f vendi_embed=%s rho=%s on %d rows (%.2fs)",
        result["vendi_pixel"],
        _fmt(result["vendi_embed"]),
        _fmt(result["rho"]),
        result["n"],
        time.perf_counter() - start,
    )
    return result


def _options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg`` over :data:`DEFAULTS`, checked: a bad value names its ``diversity.*`` key."""
    from wdiv.errors import ConfigError

    opts = {**DEFAULTS, **dict(cfg or {})}
    for key in ("sample_size", "draws", "pixel_size", "batch_size", "align_pool", "ngram"):
        try:
            ok = int(opts[key]) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"diversity.{key}: {opts[key]!r} is not a positive integer")
    if opts["align"] not in ("nearest", "index"):
        raise ConfigError(f"diversity.align: {opts['align']!r} is not nearest or index")
    return opts


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def ngram_counts(texts: list[str], n: int = 1) -> np.ndarray:
    """Rows of word n-gram counts (lower-cased words and punctuation marks), one per text."""
    grams = []
    for t in texts:
        w = WORD.findall(t.lower())
        grams.append([" ".join(w[i : i + n]) for i in range(len(w) - n + 1)])
    vocab = {g: j for j, g in enumerate(sorted({g for row in grams for g in row}))}
    out = np.zeros((len(texts), max(1, len(vocab))), dtype=np.float64)
    for i, row in enumerate(grams):
        for g in row:
            out[i, vocab[g]] += 1.0
    return out


def ngram_vendi(texts: list[str], n: int = 1) -> float:
    """Vendi score of texts as word n-gram count vectors (an empty text counts as a zero row)."""
    return vendi_score(ngram_counts(texts, n))


def measure_text_set(*, real: Any, train: Any, encoder: Any, cfg: Mapping[str, Any] | None, seed: int) -> dict[str, float | int | None]:
    """Diversity of a text training set: ``{vendi_ngram, vendi_embed, rho, weighted_vs, n, ngram}``.

    The same definitions as for images (rows, draws, alignment, rho over ``fidelity_rows``), with
    word n-gram count vectors in place of pixels and the starting model's mean-pooled last hidden
    states as embeddings. ``real``/``train`` are text sets (``texts``, ``labels``, ``encode(texts)``
    -> token batch, ``draw(i, seed)`` -> row i as augmented in one draw); ``encoder`` is a module with
    ``mean_pooled(tokens)`` (the run's text classifier), or None for ``vendi_ngram`` only.
    """
    opts = _options(cfg)
    if opts.get("encoder"):
        from wdiv.errors import ConfigError

        raise ConfigError("diversity.encoder: a named (timm) encoder is for images; text runs embed with their starting model")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    vs_rows, rho_rows, real_index, is_syn = _sample_rows(real, train, opts, rng)
    augmented = getattr(train, "eda", None) is not None
    draws = int(opts["draws"]) if augmented else 1
    rows = np.union1d(vs_rows, rho_rows)
    modified = [[train.draw(int(i), seed * 1000 + d) for i in rows] for d in range(draws)]
    where_vs, where_rho = np.searchsorted(rows, vs_rows), np.searchsorted(rows, rho_rows)
    vs_texts = [m[j] for m in modified for j in where_vs]
    n = int(opts["ngram"])
    result: dict[str, float | int | None] = {"vendi_ngram": ngram_vendi(vs_texts, n), "vendi_embed": None, "rho": None, "weighted_vs": None, "n": len(vs_texts), "ngram": n}
    if encoder is not None and hasattr(encoder, "mean_pooled"):
        bs = int(opts["batch_size"])
        device = _device(encoder)

        @torch.no_grad()
        def embed_texts(texts: list[str]) -> torch.Tensor:
            was_training = encoder.training
            encoder.eval()
            try:
                return torch.cat([encoder.mean_pooled(train.encode(texts[i : i + bs]).to(device)).float().cpu() for i in range(0, len(texts), bs)])
            finally:
                encoder.train(was_training)

        emb = [embed_texts(m) for m in modified]
        result["vendi_embed"] = vendi_score(torch.cat([e[where_vs] for e in emb]))
        if len(rho_rows):
            embed_rows = lambda ds, idx: embed_texts([ds.texts[int(i)] for i in idx])  # noqa: E731
            ref = _references(embed_rows, real, train, rho_rows, real_index, is_syn, emb[0][where_rho], augmented, opts, rng)
            result["rho"] = fidelity(ref.repeat(draws, 1), torch.cat([e[where_rho] for e in emb]))
            result["weighted_vs"] = result["vendi_embed"] * result["rho"]
    log.info("diversity (text): vendi_ngram=%.2f vendi_embed=%s rho=%s on %d rows (%.2fs)", result["vendi_ngram"], _fmt(result["vendi_embed"]), _fmt(result["rho"]), result["n"], time.perf_counter() - start)
    return result
