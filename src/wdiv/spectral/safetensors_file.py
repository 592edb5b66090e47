"""Reading .safetensors files without torch: one tensor, or one block of a 2-D tensor, at a time.

The format is a little-endian u64 header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the data. Why not safetensors.safe_open: its memory map keeps every page it
has touched resident, so the process RSS grows to the file size over a full pass; explicit reads
free each tensor's memory as soon as it is dropped. Why not safetensors' numpy reader: it refuses
bfloat16, the dtype most LLM checkpoints are stored in.

Tensors come back as numpy arrays: float64/float32/float16 as stored, bfloat16 and float8
widened to float32 exactly (bfloat16 is the top half of a float32; float8 through a 256-entry
table), integers as stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .source import WeightsError, WeightSource, stored_sha256

# Stored dtype -> how numpy holds its bytes (bfloat16 and float8 as their bits, widened on read).
_STORED = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "F8_E4M3": np.uint8, "F8_E5M2": np.uint8,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# Stored dtype -> the label its hash carries (torch's dtype names: wdiv.spectral.source.stored_sha256).
_LABELS = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
           "F8_E4M3": "torch.float8_e4m3fn", "F8_E5M2": "torch.float8_e5m2",
           "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
           "U8": "torch.uint8", "BOOL": "torch.bool"}
# Stored dtypes read_lines can hand out (bfloat16 widened to float32).
_LINE_DTYPES = ("F64", "F32", "F16", "BF16")


def _e4m3_table() -> np.ndarray:
    """float8 e4m3fn (bias 7, no infinities, NaN at S.1111.111) -> float32, all 256 codes."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp, man = (codes >> 3) & 0xF, codes & 0x7
    value = np.where(exp == 0, man * 2.0 ** -9, (8 + man) * 2.0 ** (exp - 10.0))
    value = np.where((exp == 15) & (man == 7), np.nan, value)
    return (sign * value).astype(np.float32)


def widen(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    """Stored bits -> a numpy float array numpy can compute with (exact)."""
    if dtype_name == "BF16":
        wide = raw.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    if dtype_name == "F8_E5M2":  # the top byte of a float16
        return (raw.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    if dtype_name == "F8_E4M3":
        return _e4m3_table()[raw]
    return raw


class SafetensorsFile:
    """One .safetensors file: its header read once, tensors read with plain reads when asked."""

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

    def _raw(self, key: str) -> tuple[str, tuple[int, ...], np.ndarray]:
        """(dtype name, shape, the stored bits as a numpy array of that shape)."""
        dtype_name, shape, lo, hi = self.entries[key]
        if dtype_name not in _STORED:
            raise ValueError(f"unsupported dtype {dtype_name}")
        dtype = np.dtype(_STORED[dtype_name])
        count = int(np.prod(shape, dtype=np.int64))
        if hi - lo != count * dtype.itemsize:
            raise ValueError(f"header gives {hi - lo} bytes for a {dtype_name} tensor of shape {list(shape)} "
                             f"({count * dtype.itemsize} expected)")
        raw = np.empty(shape, dtype=dtype)
        if raw.nbytes:
            with open(self.path, "rb") as fh:
                fh.seek(self.start + lo)
                if fh.readinto(memoryview(raw.reshape(-1)).cast("B")) != raw.nbytes:
                    raise ValueError("file ended before the tensor's last byte (truncated)")
        return dtype_name, shape, raw

    def get_tensor(self, key: str) -> np.ndarray:
        dtype_name, _, raw = self._raw(key)
        return widen(raw, dtype_name)

    def sha256(self, key: str) -> str:
        dtype_name, shape, raw = self._raw(key)
        return stored_sha256(_LABELS[dtype_name], shape, raw.reshape(-1))

    def can_read_lines(self, key: str) -> bool:
        """Streamable: a 2-D tensor of a line dtype whose byte span is exactly its shape's (a header
        that disagrees goes to get_tensor, which names the damage, rather than reading a neighbour's bytes)."""
        dtype_name, shape, begin, end = self.entries[key]
        return (len(shape) == 2 and dtype_name in _LINE_DTYPES and min(shape) > 0
                and end - begin == shape[0] * shape[1] * np.dtype(_STORED[dtype_name]).itemsize)

    def read_lines(self, key: str, axis: int, lo: int, hi: int) -> np.ndarray:
        """Rows (axis 0) or columns (axis 1) lo:hi of a 2-D tensor with plain reads of those bytes only.

        Rows are one contiguous read. Columns are one read per row (a row-major file has no
        contiguous column block); each row's piece is (hi - lo) elements, so a block of a few MB
        costs a few thousand reads of kilobytes, a small fraction of the Gram product it feeds.
        """
        dtype_name, (rows, cols), begin, _ = self.entries[key]
        dtype = np.dtype(_STORED[dtype_name])
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
        return widen(out, dtype_name)


def safetensors_source(path: Path) -> WeightSource:
    st = SafetensorsFile(path)
    return WeightSource(str(path), st.shapes(), st.floats(), st.get_tensor,
                        lines=st.read_lines, streamable=st.can_read_lines, hasher=st.sha256)
