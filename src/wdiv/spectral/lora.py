"""LoRA / PEFT adapters: the spectrum of each adapted layer's update dW = scale * B A, and of the
merged W + dW when the base checkpoint is given.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or
``adapter_model.bin``) in PEFT's layout: ``base_model.model.<module>.lora_A.weight`` (r x in),
``...lora_B.weight`` (out x r); embeddings ``...lora_embedding_A`` (r x num_embeddings) and
``...lora_embedding_B`` (dim x r); conv ``lora_A`` (r, in, kh, kw) with a 1 x 1 ``lora_B``.
A row is named by the base layer (``longname`` = ``<module>``, its key ``<module>.weight``), with
the base layer's shape and orientation (``fan_in_fan_out``: GPT-2's Conv1D stores in x out).
PEFT decides that orientation per module type (Conv1D: in x out, Linear: out x in) and records
only the last adjustment in the config's one ``fan_in_fan_out``, so with the base checkpoint each
non-square layer takes the orientation its base weight has (`LoraAdapter.orient`); a square layer,
or a layer without a base, follows the config.

scale = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora``; ``rank_pattern`` and
``alpha_pattern`` override r and alpha per module, matched as PEFT matches them (the first
pattern p with ``(.*\\.)?(p)$`` matching the module name). Both ``r`` and ``lora_alpha`` must be
in the config (a missing one is an error, not PEFT's silent default 8).

Why not form dW: the nonzero eigenvalues of dW^T dW are the squared singular values of dW, and
with B = Q_B R_B, A^T = Q_A R_A (thin QR) dW = scale Q_B (R_B R_A^T) Q_A^T, so they are the squared
singular values of the k x k core scale R_B R_A^T (k <= r): O((N + M) r^2) flops instead of N M r to
form dW and N M^2 for its Gram matrix, float64 throughout, and better conditioned than a Gram
product (no squaring before the small SVD).

Zero eigenvalues: dW is N x M with rank <= r, so its ESD has at most r nonzero eigenvalues. A row
describes the N x M matrix, as WeightWatcher would see the dense dW: the M eigenvalues are the
k nonzero ones and M - k exact zeros (the dense path gets ~1e-30 there). So num_evals = M, the
min_evals / max_evals filters act on M, the power-law fit drops them (<= 1e-5, as always), the
norms, ranks and log_alpha_norm are unaffected, and the matrix entropy counts them (+1e-10 each,
as WeightWatcher's formula does). One difference from WeightWatcher's analyze() on a dense dW: it
rounds weights to float32, whose rounding noise (~1e-7 sigma_max) takes the zeros' place and
passes its rank tolerance, so it reports matrix_rank = M and an entropy normalised by log M; here
the rank is the exact one (its rule on the exact spectrum), tests/test_lora.py shows both.

Dense after all: --randomize and --farms need dW's entries (formed, float64, one layer at a time),
conv adapters are formed densely (dW's kernel slices), and the merged W + dW (float64; PEFT's
merge rounds to the base dtype) goes through the usual Gram path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .api import LayerResult, layer_results, results_frame
from .esd import gram_eigenvalues
from .options import AnalyzeOptions
from .weights import (ADAPTER_CONFIG, WEIGHT_SUFFIX, WeightsError, WeightSource, find_adapter, open_weights,
                      select_layers, to_matrices)

log = logging.getLogger(__name__)

PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.(?P<adapter>(?!weight$)[^.]+))?(?P<suffix>\.weight)?")


@dataclass(frozen=True)
class LoraConfig:
    """What of adapter_config.json decides dW."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict | None = None
    alpha_pattern: dict | None = None

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """(r, scale) of one module, the patterns applied as PEFT applies them."""
        r = _pattern_value(self.rank_pattern, module, self.r)
        alpha = _pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)


def _pattern_value(patterns: dict | None, module: str, default):
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def read_config(path: Path) -> LoraConfig:
    """adapter_config.json -> LoraConfig; WeightsError('<path>: why') for anything unusable."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: not a JSON object")
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise WeightsError(f"{path}: peft_type {peft_type!r} is not a LoRA adapter")
    if cfg.get("use_dora"):
        raise WeightsError(f"{path}: use_dora adapters are not supported (their update is not scale * B A)")

    def positive_int(v) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    def number(v) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    if not positive_int(cfg.get("r")):
        raise WeightsError(f"{path}: r missing or not a positive integer (got {cfg.get('r')!r})")
    if not number(cfg.get("lora_alpha")):
        raise WeightsError(f"{path}: lora_alpha missing or not a number (got {cfg.get('lora_alpha')!r})")
    for name, ok in (("rank_pattern", positive_int), ("alpha_pattern", number)):
        pat = cfg.get(name)
        if pat is not None and (not isinstance(pat, dict) or not all(ok(v) for v in pat.values())):
            raise WeightsError(f"{path}: {name} must map module patterns to "
                               f"{'positive integers' if name == 'rank_pattern' else 'numbers'}, got {pat!r}")
    return LoraConfig(r=int(cfg["r"]), lora_alpha=float(cfg["lora_alpha"]), use_rslora=bool(cfg.get("use_rslora")),
                      fan_in_fan_out=bool(cfg.get("fan_in_fan_out")), rank_pattern=cfg.get("rank_pattern") or None,
                      alpha_pattern=cfg.get("alpha_pattern") or None)


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: where its factors are and how they make dW in the base layer's layout."""

    module: str  # the base module's name; its weight is module + ".weight"
    a_key: str
    b_key: str
    layout: str  # "linear" | "fan_in_fan_out" | "embedding" | "conv2d"
    rank: int
    scale: float
    shape: tuple[int, ...]  # the base weight's shape

    @property
    def key(self) -> str:
        return self.module + WEIGHT_SUFFIX


def lowrank_eigenvalues(B: np.ndarray, A: np.ndarray, scale: float, m: int | None = None) -> np.ndarray:
    """Ascending eigenvalues of dW^T dW (dW = scale B A, never formed), padded with zeros to m
    (default min(out, in)): the squared singular values of the thin-QR core scale R_B R_A^T."""
    b = np.asarray(B, dtype=np.float64)
    a = np.asarray(A, dtype=np.float64)
    if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"B {b.shape} and A {a.shape} do not multiply")
    m = min(b.shape[0], a.shape[1]) if m is None else m
    rb = np.linalg.qr(b, mode="r")
    ra = np.linalg.qr(a.T, mode="r")
    sv = np.linalg.svd(scale * (rb @ ra.T), compute_uv=False)
    out = np.zeros(m)
    k = min(len(sv), m)
    out[m - k:] = np.sort(sv * sv)[len(sv) - k:]
    return out


class LoraAdapter:
    """An opened adapter directory: config checked, lora_A / lora_B paired and shape-checked."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        weights = find_adapter(self.folder)
        if weights is None:
            raise WeightsError(f"{self.folder}: not an adapter directory ({ADAPTER_CONFIG} and adapter_model.safetensors)")
        self.config_path, self.weights_path = self.folder / ADAPTER_CONFIG, weights
        self.config = read_config(self.config_path)
        self.source = open_weights(weights)
        try:
            self.layers = self._pair()
        except BaseException:
            self.source.close()
            raise

    def _pair(self) -> dict[str, LoraLayer]:
        found: dict[str, dict[str, str]] = {}
        for key in self.source.keys():
            hit = _LORA_KEY.fullmatch(key)
            if hit is None or (hit["kind"].startswith("lora_embedding") == bool(hit["suffix"])):
                continue  # biases, modules_to_save copies, ...: not part of dW
            module = hit["module"].removeprefix(PREFIX)
            side = found.setdefault(module, {})
            letter = hit["kind"][-1]
            if letter in side:
                raise WeightsError(f"{self.weights_path}: two {hit['kind']} tensors for {module} ({side[letter]}, {key})")
            side[letter] = key
        if not found:
            raise WeightsError(f"{self.weights_path}: no lora_A / lora_B tensors in it")
        layers = {}
        for module, side in found.items():
            for have, lack in (("B", "A"), ("A", "B")):
                if lack not in side:
                    raise WeightsError(f"{self.weights_path}: {side[have]} has no matching lora_{lack}")
            layer = self._layer(module, side["A"], side["B"])
            layers[layer.key] = layer
        return layers

    def _layer(self, module: str, a_key: str, b_key: str) -> LoraLayer:
        a, b = self.source.shapes[a_key], self.source.shapes[b_key]
        where = f"{self.weights_path}: {module}"
        embedding = "lora_embedding" in a_key
        if len(a) == 4 and len(b) == 4:
            layout = "conv2d"
            if tuple(b[2:]) != (1, 1) or b[1] != a[0]:
                raise WeightsError(f"{where}: lora_A {a} and lora_B {b} do not make a conv update (B must be out x r x 1 x 1)")
            shape = (b[0], a[1], a[2], a[3])
        elif len(a) == 2 and len(b) == 2:
            if b[1] != a[0]:
                raise WeightsError(f"{where}: lora_A {a} and lora_B {b} shapes do not match (A is r x in, B out x r)")
            layout = "embedding" if embedding else "fan_in_fan_out" if self.config.fan_in_fan_out else "linear"
            shape = (a[1], b[0]) if layout in ("embedding", "fan_in_fan_out") else (b[0], a[1])
        else:
            raise WeightsError(f"{where}: lora_A {a} / lora_B {b}: only 2-D (linear, embedding) and conv2d adapters are read")
        rank, scale = self.config.rank_and_scale(module)
        if a[0] != rank:
            raise WeightsError(f"{self.config_path}: r={rank} for {module}, but its lora_A has {a[0]} rows "
                               "(r / rank_pattern do not describe these weights)")
        return LoraLayer(module, a_key, b_key, layout, rank, scale, tuple(shape))

    def orient(self, base_shapes: dict[str, tuple[int, ...]]) -> None:
        """Give each non-square linear layer the orientation of its base weight (out x in, or in x
        out for Conv1D), whatever the config's global fan_in_fan_out says; a shape that fits
        neither is left for adapter_specs to refuse."""
        flip = {"linear": "fan_in_fan_out", "fan_in_fan_out": "linear"}
        for key, layer in list(self.layers.items()):
            shape = tuple(base_shapes.get(key, ()))
            if layer.layout in flip and shape != layer.shape and shape == layer.shape[::-1]:
                self.layers[key] = replace(layer, layout=flip[layer.layout], shape=shape)

    def factors(self, layer: LoraLayer) -> tuple[np.ndarray, np.ndarray]:
        """(B, A) in float64 with dW (out x in, before any transpose) = scale * B @ A."""
        a = np.asarray(self.source.tensor(layer.a_key), dtype=np.float64)
        b = np.asarray(self.source.tensor(layer.b_key), dtype=np.float64)
        if layer.layout == "conv2d":
            b = b[:, :, 0, 0]
        return b, a

    def delta(self, layer: LoraLayer) -> np.ndarray:
        """Dense float64 dW in the base weight's layout (shape layer.shape)."""
        b, a = self.factors(layer)
        if layer.layout == "conv2d":
            return layer.scale * np.einsum("or,rikl->oikl", b, a)
        dw = layer.scale * (b @ a)
        return dw.T if layer.layout in ("embedding", "fan_in_fan_out") else dw

    def as_source(self) -> WeightSource:
        """The adapted layers as a WeightSource of their dense dW (for the layer selection)."""
        shapes = {layer.key: layer.shape for layer in self.layers.values()}
        return WeightSource(str(self.folder), shapes, {k: True for k in shapes},
                            lambda key: self.delta(self.layers[key]))

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "LoraAdapter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def adapter_specs(adapter: LoraAdapter, opts: AnalyzeOptions, base: WeightSource | None = None):
    """The adapted layers the options select; layer_id (and orientation) the base checkpoint's when it is given."""
    if base is not None:
        adapter.orient(base.shapes)
    specs = select_layers(adapter.as_source(), pool=opts.pool, min_evals=opts.min_evals, max_evals=opts.max_evals,
                          max_N=opts.max_N, include=opts.include, exclude=opts.exclude)
    if base is None:
        return specs
    ids = {k: i for i, k in enumerate(k for k in base.keys() if k.endswith(WEIGHT_SUFFIX))}
    for spec in specs:
        if spec.key not in base.shapes:
            raise WeightsError(f"{base.label}: has no {spec.key} (adapted in {adapter.weights_path})")
        if tuple(base.shapes[spec.key]) != spec.shape:
            raise WeightsError(f"{base.label}: {spec.key} is {tuple(base.shapes[spec.key])}, the adapter's update "
                               f"is {spec.shape} ({adapter.weights_path})")
    return [replace(spec, layer_id=ids[spec.key]) for spec in specs]


def delta_evals(adapter: LoraAdapter, layer: LoraLayer, m: int) -> np.ndarray | None:
    """dW's eigenvalues from the factors ((1, m)), or None where dW is analysed densely (conv)."""
    if layer.layout == "conv2d":
        return None
    b, a = adapter.factors(layer)
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        return np.full((1, m), np.nan)  # this layer's row fails (api.layer_results), not the whole adapter
    return lowrank_eigenvalues(b, a, layer.scale, m)[None, :]


def iter_adapter_results(adapter: LoraAdapter, opts: AnalyzeOptions, base: WeightSource | None = None
                         ) -> Iterator[LayerResult]:
    """Rows of every selected adapted layer: dW (matrix="delta") and, with the base checkpoint,
    W + dW (matrix="merged") after it."""
    for spec in adapter_specs(adapter, opts, base):
        layer = adapter.layers[spec.key]
        ev = delta_evals(adapter, layer, spec.matrix_shape[1])
        mats = None
        if ev is None or opts.randomize or opts.farms:
            mats = to_matrices(spec, adapter.delta(layer))
        if ev is None:
            ev = gram_eigenvalues(mats, device=opts.device)
        results = layer_results(spec, mats, ev, opts)
        if base is not None:
            merged = to_matrices(spec, np.asarray(base.tensor(spec.key), dtype=np.float64) + adapter.delta(layer))
            results += [_tagged(r, "merged") for r in
                        layer_results(spec, merged, gram_eigenvalues(merged, device=opts.device), opts)]
        for res in results:
            res.row.setdefault("matrix", "delta")
            yield res


def analyze_adapter(folder, base=None, **options):
    """DataFrame of an adapter directory's rows (the Python face of `wdiv.analyze ADAPTER_DIR`):
    dW per adapted layer, + W + dW with `base` (a checkpoint path); options as wdiv.spectral.analyze's."""
    opts = AnalyzeOptions.from_kwargs(**options)
    with LoraAdapter(Path(folder)) as adapter:
        if base is None:
            return results_frame([r.row for r in iter_adapter_results(adapter, opts)])
        with open_weights(base) as source:
            return results_frame([r.row for r in iter_adapter_results(adapter, opts, source)])


def _tagged(res: LayerResult, matrix: str) -> LayerResult:
    res.row["matrix"] = matrix
    return res


def adapter_hashes(adapter: LoraAdapter, specs) -> dict[str, str]:
    """longname -> sha256 of the layer's lora_A and lora_B as stored, with its scale."""
    out = {}
    for spec in specs:
        layer = adapter.layers[spec.key]
        parts = [adapter.source.sha256(layer.a_key), adapter.source.sha256(layer.b_key), repr(layer.scale)]
        out[spec.longname] = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return out
