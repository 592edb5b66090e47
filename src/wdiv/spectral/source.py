"""What every weights reader hands the engine: a `WeightSource` of named numpy arrays.

Why its own module: the readers (safetensors_file for .safetensors files, torch_weights for
PyTorch files, state dicts and modules) both build WeightSources, and weights.py picks the reader
per input; with the shared pieces here no reader imports another, and the safetensors path never
imports torch (an analysis of safetensors checkpoints runs in a process without it).

Arrays are float32 or float64 as numpy holds them (float16 stays float16; bfloat16 and float8 are
widened to float32, exactly). A layer's hash is taken from its bytes *as stored*
(`stored_sha256`), so a widened copy never changes it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable

import numpy as np

WEIGHT_SUFFIX = ".weight"
NOT_WEIGHTS = "not a safetensors or PyTorch file: {}"


class WeightsError(RuntimeError):
    """A weights file or directory that cannot be read; the message names the file."""


# Reads rows (axis 0) or columns (axis 1) lo:hi of a stored 2-D tensor: (key, axis, lo, hi) -> array.
LineReader = Callable[[str, int, int, int], np.ndarray]


def stored_sha256(dtype_label: str, shape: tuple[int, ...], data) -> str:
    """sha256 of a tensor as stored: its dtype's label (torch's name, e.g. ``torch.bfloat16``, for
    every reader, so hashes written by earlier versions still compare), its shape and raw bytes."""
    digest = hashlib.sha256(f"{dtype_label}|{tuple(shape)}|".encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


class WeightSource:
    """Ordered keys with shapes, one tensor at a time on demand (a numpy array), and for
    file-backed 2-D tensors a block of rows or columns at a time (`read_lines`)."""

    def __init__(self, label: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, bool],
                 getter: Callable[[str], np.ndarray], module_kinds: dict[str, str] | None = None,
                 close: Callable[[], None] | None = None, lines: LineReader | None = None,
                 streamable: Callable[[str], bool] | None = None,
                 hasher: Callable[[str], str] | None = None):
        self.label = label
        self.shapes = shapes
        self._is_float = dtypes
        self._get = getter
        self.module_kinds = module_kinds  # key -> "dense"|"conv2d"|None (nn.Module inputs only)
        self._close = close
        self._lines = lines
        self._streamable = streamable
        self._hasher = hasher

    def keys(self) -> list[str]:
        return sorted(self.shapes, key=natural_key)

    def is_float(self, key: str) -> bool:
        return self._is_float[key]

    def tensor(self, key: str) -> np.ndarray:
        try:
            return self._get(key)
        except Exception as exc:  # truncated data, I/O errors
            raise WeightsError(f"{self.label}: cannot read tensor {key!r}: {exc}") from exc

    def sha256(self, key: str) -> str:
        """`stored_sha256` of a tensor: equal hash = the layer was not changed (same dtype, same bits)."""
        if self._hasher is None:
            raise WeightsError(f"{self.label}: cannot hash tensor {key!r} as stored")
        try:
            return self._hasher(key)
        except WeightsError:
            raise
        except Exception as exc:
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
