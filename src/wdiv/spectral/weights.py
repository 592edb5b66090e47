"""Weights in, named weight matrices out: streamed, one tensor at a time.

A *source* (`open_weights`) lists the state-dict keys with their shapes without reading
any data, and hands out one tensor at a time; safetensors tensors are read one by one from
disk (see SafetensorsFile), so peak memory is bounded by the largest tensor, not the model.
A 2-D tensor of a safetensors file (single or sharded) can also be read a block of rows or
columns at a time (`WeightSource.read_lines`), so its Gram matrix is accumulated without ever
holding the whole tensor (wdiv.spectral.esd.gram_streamed). Tensors of PyTorch files are held
by the state dict torch.load returns (memory-mapped where torch can), so they are not streamed.

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
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from wdiv.io import sha256_file

log = logging.getLogger(__name__)

WEIGHT_SUFFIX = ".weight"


class WeightsError(RuntimeError):
    """A weights file or directory that cannot be read; the message names the file."""


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


def to_matrices(spec: LayerSpec, tensor: torch.Tensor) -> torch.Tensor:
    """Tensor -> (rf, N, M) stack of matrices with N >= M (a view when possible)."""
    t = tensor.detach()
    if spec.kind == "dense":
        mats = t.unsqueeze(0)
    elif _kernel_dims_are_matrix(spec.shape):
        mats = t.reshape(-1, t.shape[2], t.shape[3])
    else:
        mats = t.permute(2, 3, 0, 1).reshape(-1, t.shape[0], t.shape[1])
    if mats.shape[1] < mats.shape[2]:
        mats = mats.transpose(1, 2)
    return mats


# ---------------------------------------------------------------- sources


# Reads rows (axis 0) or columns (axis 1) lo:hi of a stored 2-D tensor: (key, axis, lo, hi) -> array.
LineReader = Callable[[str, int, int, int], np.ndarray]


class WeightSource:
    """Ordered keys with shapes, one tensor at a time on demand, and for file-backed 2-D tensors
    a block of rows or columns at a time (`read_lines`)."""

    def __init__(self, label: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, bool],
                 getter: Callable[[str], torch.Tensor], module_kinds: dict[str, str] | None = None,
                 close: Callable[[], None] | None = None, lines: LineReader | None = None,
                 streamable: Callable[[str], bool] | None = None):
        self.label = label
        self.shapes = shapes
        self._is_float = dtypes
        self._get = getter
        self.module_kinds = module_kinds  # key -> "dense"|"conv2d"|None (nn.Module inputs only)
        self._close = close
        self._lines = lines
        self._streamable = streamable

    def keys(self) -> list[str]:
        return sorted(self.shapes, key=natural_key)

    def is_float(self, key: str) -> bool:
        return self._is_float[key]

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self._get(key)
        except Exception as exc:  # truncated data, I/O errors
            raise WeightsError(f"{self.label}: cannot read tensor {key!r}: {exc}") from exc

    def can_stream(self, key: str) -> bool:
        """Whether `read_lines` reads this tensor from its file a block at a time (2-D, float16/
        bfloat16/float32/float64 in a safetensors file); in-memory tensors are not streamed."""
        return self._lines is not None and self._streamable is not None and self._streamable(key)

    def read_lines(self, key: str, axis: int, lo: int, hi: int) -> np.ndarray:
        """Rows (axis 0) or columns (axis 1) lo:hi of a streamable 2-D tensor, as stored (bfloat16
        widened to float32, exactly), reading only those bytes. Thread-safe (one file handle a call)."""
        try:
            return self._lines(key, axis, lo, hi)
        except Exception as exc:  # truncated data, I/O errors
            raise WeightsError(f"{self.label}: cannot read tensor {key!r}: {exc}") from exc

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def natural_key(key: str) -> list:
    """Sort key that orders 'blocks.2' before 'blocks.10'."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


NOT_WEIGHTS = "not a safetensors or PyTorch file: {}"
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
    if isinstance(weights, torch.nn.Module):
        return _module_source(weights)
    if isinstance(weights, Mapping):
        return _dict_source(dict(weights), "<state dict>")
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
        return _safetensors_source(path)
    if kind == "torch":
        return _torch_source(path)
    raise WeightsError(NOT_WEIGHTS.format(path))


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool,
              "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None)}
# Stored dtypes read_lines can hand to numpy (bfloat16 is read as its bits and widened to float32).
_LINE_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class SafetensorsFile:
    """Reads a .safetensors file one tensor at a time with plain reads.

    Why not safetensors.safe_open: its memory map keeps every page it has touched resident,
    so the process RSS grows to the file size over a full pass; explicit reads free each
    tensor's memory as soon as it is dropped. The format is a little-endian u64 header length,
    a JSON header {name: {dtype, shape, data_offsets}}, then the data.
    """

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError(f"header length {n} does not fit a {size}-byte file")
                header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            self.start = 8 + n
            self.entries = {}
            for key, info in header.items():
                lo, hi = info["data_offsets"]
                if not 0 <= lo <= hi or self.start + hi > size:
                    raise ValueError(f"tensor {key!r} ends at byte {self.start + hi}, file has {size}: truncated")
                self.entries[key] = (info["dtype"], tuple(info["shape"]), lo, hi)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e[1] for k, e in self.entries.items()}

    def floats(self) -> dict[str, bool]:
        return {k: e[0].startswith(("F", "BF")) for k, e in self.entries.items()}

    def get_tensor(self, key: str) -> torch.Tensor:
        dtype_name, shape, lo, hi = self.entries[key]
        dtype = _ST_DTYPES.get(dtype_name)
        if dtype is None:
            raise ValueError(f"unsupported dtype {dtype_name}")
        buf = bytearray(hi - lo)
        with open(self.path, "rb") as fh:
            fh.seek(self.start + lo)
            if fh.readinto(buf) != len(buf):
                raise ValueError("file ended before the tensor's last byte (truncated)")
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def can_read_lines(self, key: str) -> bool:
        """Streamable: a 2-D tensor of a line dtype whose byte span is exactly its shape's (a header
        that disagrees goes to get_tensor, which names the damage, rather than reading a neighbour's bytes)."""
        dtype_name, shape, begin, end = self.entries[key]
        return (len(shape) == 2 and dtype_name in _LINE_DTYPES and min(shape) > 0
                and end - begin == shape[0] * shape[1] * np.dtype(_LINE_DTYPES[dtype_name]).itemsize)

    def read_lines(self, key: str, axis: int, lo: int, hi: int) -> np.ndarray:
        """Rows (axis 0) or columns (axis 1) lo:hi of a 2-D tensor with plain reads of those bytes only.

        Rows are one contiguous read. Columns are one read per row (a row-major file has no
        contiguous column block); each row's piece is (hi - lo) elements, so a block of a few MB
        costs a few thousand reads of kilobytes, a small fraction of the Gram product it feeds.
        """
        dtype_name, (rows, cols), begin, _ = self.entries[key]
        dtype = np.dtype(_LINE_DTYPES[dtype_name])
        size = dtype.itemsize
        if not (axis in (0, 1) and 0 <= lo < hi <= (rows, cols)[axis]):
            raise ValueError(f"lines {lo}:{hi} on axis {axis} outside a {rows} x {cols} tensor")
        out = np.empty((hi - lo, cols) if axis == 0 else (rows, hi - lo), dtype=dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if axis == 0:
                pieces = [(out, self.start + begin + lo * cols * size)]
            else:
                first = self.start + begin + lo * size
                pieces = ((out[r], first + r * cols * size) for r in range(rows))
            for buf, offset in pieces:
                if os.preadv(fd, [buf], offset) != buf.nbytes:
                    raise ValueError("file ended before the tensor's last byte (truncated)")
        finally:
            os.close(fd)
        if dtype_name == "BF16":  # bfloat16 is the top half of a float32: widening is exact
            wide = out.astype(np.uint32)
            wide <<= 16
            return wide.view(np.float32)
        return out


def _safetensors_source(path: Path) -> WeightSource:
    st = SafetensorsFile(path)
    return WeightSource(str(path), st.shapes(), st.floats(), st.get_tensor,
                        lines=st.read_lines, streamable=st.can_read_lines)


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
            state = _torch_state(shard_path)  # read once for shapes, dropped, loaded again when asked
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

    def get(key: str) -> torch.Tensor:
        shard = key_file[key]
        if shard in st_files:
            return st_files[shard].get_tensor(key)
        if shard not in held:
            held.clear()
            held[shard] = _torch_state(torch_shards[shard])
        return held[shard][key]

    def lines(key: str, axis: int, lo: int, hi: int) -> np.ndarray:
        return st_files[key_file[key]].read_lines(key, axis, lo, hi)

    def streamable(key: str) -> bool:
        shard = key_file[key]
        return shard in st_files and st_files[shard].can_read_lines(key)

    return WeightSource(str(index_path.parent), shapes, floats, get, close=held.clear,
                        lines=lines, streamable=streamable)


def _torch_load(path: Path):
    """torch.load(weights_only=True): tensors and plain containers only, never code."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                is_torch = any(n.endswith("data.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            is_torch = True  # a damaged archive: let torch name the damage
        if not is_torch:
            raise WeightsError(NOT_WEIGHTS.format(path))
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise WeightsError(f"{path}: cannot read weights (not a torch checkpoint)") from exc
        raise WeightsError(f"{path}: refused: this pickle needs code to load and is never executed "
                           "(only tensors/state dicts are read, torch.load(weights_only=True))") from exc
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc


def _torch_state(path: Path) -> dict:
    state = _find_state_dict(_torch_load(path))
    if state is None:
        raise WeightsError(f"{path}: no state dict of tensors found in this file")
    return state


def _torch_source(path: Path) -> WeightSource:
    return _dict_source(_torch_state(path), str(path))


def _find_state_dict(obj) -> dict | None:
    if isinstance(obj, Mapping):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for k in ("state_dict", "model", "module", "model_state_dict"):
            if isinstance(obj.get(k), Mapping):
                return _find_state_dict(obj[k])
    return None


def _dict_source(state: dict, label: str, module_kinds=None) -> WeightSource:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return WeightSource(label, {k: tuple(v.shape) for k, v in tensors.items()},
                        {k: v.is_floating_point() for k, v in tensors.items()},
                        tensors.__getitem__, module_kinds=module_kinds)


def module_kind(module: torch.nn.Module, weight: torch.Tensor) -> str | None:
    """WeightWatcher's module rule: the class name decides (linear, conv2d, embedding; norms never)."""
    typestr = str(type(module)).lower()
    if "linear" in typestr or "conv1d" in typestr or "embedding" in typestr:
        return "dense" if weight.dim() == 2 else None
    if "conv2d" in typestr:
        return "conv2d" if weight.dim() == 4 else None
    return None


def _module_source(model: torch.nn.Module) -> WeightSource:
    state = {}
    kinds = {}
    for longname, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and longname:
            key = longname + WEIGHT_SUFFIX
            state[key] = w
            kinds[key] = module_kind(mod, w)
    return _dict_source(state, f"<{type(model).__name__}>", module_kinds=kinds)


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


def iter_matrices(source: WeightSource, specs: list[LayerSpec]) -> Iterator[tuple[LayerSpec, torch.Tensor]]:
    """Stream (spec, (rf, N, M) float tensor) one layer at a time."""
    for spec in specs:
        yield spec, to_matrices(spec, source.tensor(spec.key))


# sha256 of a file or a sharded checkpoint's shard set: the one definition in wdiv.io.
file_sha256 = sha256_file


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor as stored (dtype, shape, raw bytes; no conversion to float64), so two
    checkpoints' copies of a layer compare exactly: equal hash = the layer was not changed."""
    import hashlib

    t = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def layer_hashes(source: WeightSource, specs: list[LayerSpec]) -> dict[str, str]:
    """longname -> tensor_sha256 of its stored weight, one tensor read at a time."""
    return {spec.longname: tensor_sha256(source.tensor(spec.key)) for spec in specs}
