"""Weights in, named weight matrices out: streamed, one tensor at a time.

A *source* (`open_weights`) lists the state-dict keys with their shapes without reading
any data, and hands out one tensor at a time; safetensors tensors are read one by one from
disk (see SafetensorsFile), so peak memory is bounded by the largest tensor, not the model.
A 2-D tensor of a safetensors file (single or sharded) can also be read a block of rows or
columns at a time (`WeightSource.read_lines`), so its Gram matrix is accumulated without ever
holding the whole tensor (wdiv.spectral.esd.gram_streamed). Tensors of PyTorch files are held
by the state dict torch.load returns (memory-mapped where torch can), so they are not streamed.
Readers: wdiv.spectral.safetensors_file (no torch) and wdiv.spectral.torch_weights (PyTorch files,
state dicts, modules; imported only for those, so analysing safetensors never loads torch).
Every reader hands out numpy arrays (wdiv.spectral.source).

Formats are told by a file's first bytes, not its name (`sniff_format`): safetensors, or a
PyTorch file (torch.save's zip archive or its legacy pickle), read only with
``torch.load(weights_only=True)``; anything else is "not a safetensors or PyTorch file: PATH".
A directory is read in the Hugging Face layout (`find_checkpoint`): model.safetensors, sharded
*.safetensors with their index, sharded pytorch_model-*.bin with pytorch_model.bin.index.json
(one shard held at a time), pytorch_model.bin, model.pt.

Layer selection (`select_layers`) follows WeightWatcher 0.7.7 for PyTorch models:
2-D weights (Linear, Embedding) and 4-D conv kernels; conv kernels are cut per kernel
position into N x M slices (N >= M), slices pooled into one ESD by default; filters
min_evals / max_evals (on M*rf pooled, on M per slice) and max_N.

Rules that differ because a state dict carries no module types (tested in tests/test_weights.py):
- From a file or a state dict, every floating ``*.weight`` of rank 2 is a dense layer and of
  rank 4 a conv2d layer; WeightWatcher, given a module, keeps a 2-D weight only when the module's
  class name says linear / conv1d / embedding. Given an ``nn.Module``, wdiv applies that module
  rule too.
- Rank-3 weights (Conv1d kernels, Bilinear) are skipped; WeightWatcher feeds them to an SVD
  as a stack, which is not a meaningful single ESD.
- ``layer_id`` is the ordinal of the weight among all ``*.weight`` keys in natural key order
  (``blocks.2`` before ``blocks.10``), so a model and its saved file get the same ids
  (safetensors files do not keep the model's key order).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .safetensors_file import SafetensorsFile, safetensors_source
from .source import NOT_WEIGHTS, WEIGHT_SUFFIX, LineReader, WeightsError, WeightSource, natural_key

__all__ = ["LayerSpec", "LineReader", "NOT_WEIGHTS", "WEIGHT_SUFFIX", "WeightSource", "WeightsError", "natural_key",
           "checkpoint_files", "find_adapter", "find_checkpoint", "layer_hashes", "open_weights", "select_layers",
           "sniff_format", "to_matrices"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSpec:
    """One analysable weight: where it is and how it is cut into matrices (no data)."""

    key: str
    longname: str
    name: str
    layer_id: int
    kind: str  # "dense" | "conv2d"
    shape: tuple[int, ...]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(N, M) of each matrix, N >= M."""
        a, b = _slice_dims(self.shape) if self.kind == "conv2d" else self.shape
        return (max(a, b), min(a, b))

    @property
    def rf(self) -> int:
        """Receptive field: number of slices of a conv kernel (1 for dense)."""
        return _num_slices(self.shape) if self.kind == "conv2d" else 1


def _kernel_dims_are_matrix(shape: tuple[int, ...]) -> bool:
    # WeightWatcher's channel detection: slices are (out, in) unless the kernel dims dominate.
    out_c, in_c, kh, kw = shape
    return out_c + in_c < kh + kw


def _slice_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[2], shape[3]) if _kernel_dims_are_matrix(shape) else (shape[0], shape[1])


def _num_slices(shape: tuple[int, ...]) -> int:
    return shape[0] * shape[1] if _kernel_dims_are_matrix(shape) else shape[2] * shape[3]


def to_matrices(spec: LayerSpec, tensor: np.ndarray) -> np.ndarray:
    """Tensor -> (rf, N, M) stack of matrices with N >= M (a view when possible)."""
    t = np.asarray(tensor)
    if spec.kind == "dense":
        mats = t[None]
    elif _kernel_dims_are_matrix(spec.shape):
        mats = t.reshape(-1, t.shape[2], t.shape[3])
    else:
        mats = t.transpose(2, 3, 0, 1).reshape(-1, t.shape[0], t.shape[1])
    if mats.shape[1] < mats.shape[2]:
        mats = mats.transpose(0, 2, 1)
    return mats


# ---------------------------------------------------------------- sources


# What a checkpoint directory may hold, in order of preference (Hugging Face's names; model.pt).
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt")
INDEX_GLOBS = ("*.safetensors.index.json", "pytorch_model.bin.index.json")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")


def find_checkpoint(folder: Path) -> Path | None:
    """The weights a checkpoint directory holds, or None: model.safetensors, a sharded
    *.safetensors.index.json, a sharded pytorch_model.bin.index.json, pytorch_model.bin, model.pt."""
    folder = Path(folder)
    if (folder / SINGLE_FILES[0]).is_file():
        return folder / SINGLE_FILES[0]
    for pattern in INDEX_GLOBS:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    for name in SINGLE_FILES[1:]:
        if (folder / name).is_file():
            return folder / name
    return None


# A PEFT adapter directory (wdiv.spectral.lora reads it): its config and its weights, in order of preference.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def find_adapter(folder: Path) -> Path | None:
    """The weights file of a PEFT adapter directory (adapter_config.json beside it), or None."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return None
    return next((folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()), None)


def checkpoint_files(weights) -> list[Path]:
    """The files open_weights(weights) reads (an index and its shards, or the one file; an adapter's
    config and weights), no data read."""
    path = Path(weights)
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None and find_adapter(path) is not None:
            return [path / ADAPTER_CONFIG, find_adapter(path)]
        return checkpoint_files(found) if found is not None else []
    if not path.name.endswith(INDEX_SUFFIXES):
        return [path] if path.is_file() else []
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except Exception:
        shards = []
    return [path, *(path.parent / s for s in shards if (path.parent / s).is_file())]


def sniff_format(path: Path) -> str | None:
    """'safetensors' | 'torch' | None from a file's first bytes (its name is not trusted)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive (checked for data.pkl below)
        return "torch"
    if head[:1] == b"\x80":  # a pickle: torch's legacy format
        return "torch"
    return None


def open_weights(weights) -> WeightSource:
    """Path (file or checkpoint dir), state dict or nn.Module -> WeightSource."""
    if not isinstance(weights, (str, os.PathLike)):  # an nn.Module or a state dict
        return _torch_reader().in_memory_source(weights)
    path = Path(weights)
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            raise WeightsError(f"{path}: no weights found (expected model.safetensors, a *.safetensors.index.json, "
                               "pytorch_model.bin(.index.json) or model.pt)")
        return open_weights(found)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    if path.name.endswith(INDEX_SUFFIXES):
        return _sharded_source(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        return safetensors_source(path)
    if kind == "torch":
        return _torch_reader().torch_file_source(path)
    raise WeightsError(NOT_WEIGHTS.format(path))


def _torch_reader():
    """wdiv.spectral.torch_weights, imported when a PyTorch file is met (it loads torch, which
    safetensors inputs never need)."""
    from . import torch_weights

    return torch_weights


def _sharded_source(index_path: Path) -> WeightSource:
    """A sharded checkpoint: an index ({"weight_map": {key: shard file}}) of safetensors or torch shards."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError("empty weight_map")
    except Exception as exc:
        raise WeightsError(f"{index_path}: not a valid checkpoint index ({type(exc).__name__}: {exc})") from exc
    shapes: dict = {}
    floats: dict = {}
    key_file: dict = {}
    st_files: dict[str, SafetensorsFile] = {}
    torch_shards: dict[str, Path] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise WeightsError(f"{shard_path}: shard listed in {index_path.name} is missing")
        if shard_path.stat().st_size == 0:
            raise WeightsError(f"{shard_path}: empty file")
        kind = sniff_format(shard_path)
        if kind == "safetensors":
            st_files[shard] = st = SafetensorsFile(shard_path)
            entries, is_float = st.shapes(), st.floats()
        elif kind == "torch":
            torch_shards[shard] = shard_path
            state = _torch_reader().torch_state(shard_path)  # read once for shapes, dropped, loaded again when asked
            entries = {k: tuple(v.shape) for k, v in state.items()}
            is_float = {k: v.is_floating_point() for k, v in state.items()}
            del state
        else:
            raise WeightsError(NOT_WEIGHTS.format(shard_path))
        keys = [k for k, f in weight_map.items() if f == shard]
        missing = [k for k in keys if k not in entries]
        if missing:
            raise WeightsError(f"{shard_path}: lacks {missing[0]!r} listed in {index_path.name}")
        shapes.update({k: entries[k] for k in keys})
        floats.update({k: is_float[k] for k in keys})
        key_file.update({k: shard for k in keys})
    held: dict[str, dict] = {}  # the one torch shard loaded now

    def held_tensor(key: str):
        shard = key_file[key]
        if shard not in held:
            held.clear()
            held[shard] = _torch_reader().torch_state(torch_shards[shard])
        return held[shard][key]

    def get(key: str) -> np.ndarray:
        shard = key_file[key]
        if shard in st_files:
            return st_files[shard].get_tensor(key)
        return _torch_reader().to_numpy(held_tensor(key))

    def sha256(key: str) -> str:
        shard = key_file[key]
        if shard in st_files:
            return st_files[shard].sha256(key)
        return _torch_reader().tensor_sha256(held_tensor(key))

    def lines(key: str, axis: int, lo: int, hi: int) -> np.ndarray:
        return st_files[key_file[key]].read_lines(key, axis, lo, hi)

    def streamable(key: str) -> bool:
        shard = key_file[key]
        return shard in st_files and st_files[shard].can_read_lines(key)

    return WeightSource(str(index_path.parent), shapes, floats, get, close=held.clear,
                        lines=lines, streamable=streamable, hasher=sha256)


# ---------------------------------------------------------------- selection


def select_layers(source: WeightSource, *, pool: bool = True, min_evals: int = 10,
                  max_evals: int = 15000, max_N: int = 50000,
                  include: str | None = None, exclude: str | None = None) -> list[LayerSpec]:
    """The layers WeightWatcher would analyse, as LayerSpecs in natural key order.

    include/exclude are regular expressions searched in the longname.
    """
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None
    specs = []
    weight_keys = [k for k in source.keys() if k.endswith(WEIGHT_SUFFIX)]
    for layer_id, key in enumerate(weight_keys):
        shape = source.shapes[key]
        longname = key[: -len(WEIGHT_SUFFIX)]
        if source.module_kinds is not None:
            kind = source.module_kinds.get(key)
        else:
            kind = {2: "dense", 4: "conv2d"}.get(len(shape))
        if kind is None or not source.is_float(key) or 0 in shape:
            continue
        if inc is not None and not inc.search(longname):
            continue
        if exc is not None and exc.search(longname):
            continue
        spec = LayerSpec(key, longname, longname.rsplit(".", 1)[-1], layer_id, kind, tuple(shape))
        n, m = spec.matrix_shape
        num_evals = m * spec.rf if pool else m
        if min_evals and num_evals < min_evals:
            continue
        if max_evals and num_evals > max_evals:
            continue
        if n > max_N:
            continue
        specs.append(spec)
    return specs


def layer_hashes(source: WeightSource, specs: list[LayerSpec]) -> dict[str, str]:
    """longname -> sha256 of its weight as stored (WeightSource.sha256), one tensor read at a time."""
    return {spec.longname: source.sha256(spec.key) for spec in specs}
