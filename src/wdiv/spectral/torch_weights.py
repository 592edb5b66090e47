"""PyTorch inputs as WeightSources: torch.save files, state dicts and nn.Modules.

The only reader that imports torch; weights.open_weights comes here only for such inputs, so an
analysis of safetensors checkpoints never loads torch. Files are read only with
``torch.load(weights_only=True)`` (memory-mapped where torch can): tensors and plain containers,
never code. Tensors reach the engine as numpy arrays (bfloat16 and float8 widened to float32);
their hashes are taken from the tensor as stored (wdiv.spectral.source.stored_sha256).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .source import NOT_WEIGHTS, WEIGHT_SUFFIX, WeightsError, WeightSource, stored_sha256


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a CPU numpy array, without a copy where numpy knows its dtype."""
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float64, torch.float32, torch.float16):
        t = t.float()  # bfloat16, float8: numpy has no such dtype; widening is exact
    return t.numpy()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor as stored (dtype, shape, raw bytes; no conversion to float64), so two
    checkpoints' copies of a layer compare exactly: equal hash = the layer was not changed."""
    t = tensor.detach().to("cpu").contiguous()
    return stored_sha256(str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy())


def torch_load(path: Path):
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


def torch_state(path: Path) -> dict:
    """The state dict of tensors a PyTorch file holds (at its top, or under state_dict / model / ...)."""
    state = _find_state_dict(torch_load(path))
    if state is None:
        raise WeightsError(f"{path}: no state dict of tensors found in this file")
    return state


def torch_file_source(path: Path) -> WeightSource:
    return dict_source(torch_state(path), str(path))


def _find_state_dict(obj) -> dict | None:
    if isinstance(obj, Mapping):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for k in ("state_dict", "model", "module", "model_state_dict"):
            if isinstance(obj.get(k), Mapping):
                return _find_state_dict(obj[k])
    return None


def _as_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return None


def dict_source(state: Mapping, label: str, module_kinds=None) -> WeightSource:
    """A state dict (torch tensors or numpy arrays) as a WeightSource; other values are skipped."""
    tensors = {k: t for k, t in ((k, _as_tensor(v)) for k, v in state.items()) if t is not None}
    return WeightSource(label, {k: tuple(v.shape) for k, v in tensors.items()},
                        {k: v.is_floating_point() for k, v in tensors.items()},
                        lambda key: to_numpy(tensors[key]), module_kinds=module_kinds,
                        hasher=lambda key: tensor_sha256(tensors[key]))


def module_kind(module: torch.nn.Module, weight: torch.Tensor) -> str | None:
    """WeightWatcher's module rule: the class name decides (linear, conv2d, embedding; norms never)."""
    typestr = str(type(module)).lower()
    if "linear" in typestr or "conv1d" in typestr or "embedding" in typestr:
        return "dense" if weight.dim() == 2 else None
    if "conv2d" in typestr:
        return "conv2d" if weight.dim() == 4 else None
    return None


def module_source(model: torch.nn.Module) -> WeightSource:
    state = {}
    kinds = {}
    for longname, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and longname:
            key = longname + WEIGHT_SUFFIX
            state[key] = w
            kinds[key] = module_kind(mod, w)
    return dict_source(state, f"<{type(model).__name__}>", module_kinds=kinds)


def in_memory_source(weights) -> WeightSource:
    """An nn.Module or a state dict -> WeightSource."""
    if isinstance(weights, torch.nn.Module):
        return module_source(weights)
    if isinstance(weights, Mapping):
        return dict_source(dict(weights), "<state dict>")
    raise WeightsError(f"cannot analyse a {type(weights).__name__}: give a path, a state dict or an nn.Module")
