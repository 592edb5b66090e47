"""Weights and resume state, written crash-safe through wdiv.io (temporary file, then os.replace).

Resume state is two files: the epoch's weights (safetensors) and ``state.pt`` (optimizer,
epoch, history; loadable with ``torch.load(weights_only=True)``). ``state.pt`` names its weights
file and is written last, so a kill at any moment leaves either the old or the new pair.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wdiv.errors import InputError
from wdiv.io import atomic_path, sha256_file, write_json, write_text

__all__ = ["STATE", "atomic_path", "load_resume", "load_weights", "save_resume", "save_weights", "sha256_file", "write_json", "write_text"]

STATE = "state.pt"


def save_weights(model_or_state, path: Path) -> None:
    """Write a state dict (or a module's) as safetensors, atomically."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read weights from safetensors, or from a torch file without unpickling code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def save_resume(ckpt_dir: Path, *, model, optimizer, epoch: int, step: int, history: list[dict]) -> None:
    """Checkpoint after ``epoch`` (1-based count of finished epochs)."""
    ckpt_dir = Path(ckpt_dir)
    weights = f"epoch{epoch:04d}.safetensors"
    save_weights(model, ckpt_dir / weights)
    state = {"epoch": epoch, "step": step, "weights": weights, "optimizer": optimizer.state_dict(), "history": history}
    with atomic_path(ckpt_dir / STATE) as tmp:
        torch.save(state, tmp)
    for old in ckpt_dir.glob("epoch*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)


def load_resume(ckpt_dir: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The last (state, weights) pair, or None when there is no checkpoint.

    A damaged pair (truncated, garbage, a weights file missing) raises :class:`InputError`
    naming the file, never a traceback from deep inside torch or safetensors.
    """
    state_path = Path(ckpt_dir) / STATE
    if not state_path.exists():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bytes that are not its format
        raise damaged(state_path, f"not a readable torch file ({_first_line(err)})") from None
    if not isinstance(state, dict) or not {"epoch", "step", "weights", "optimizer", "history"} <= state.keys():
        raise damaged(state_path, "not a wdiv resume state")
    weights_path = Path(ckpt_dir) / str(state["weights"])
    if not weights_path.is_file():
        raise damaged(weights_path, "missing")
    try:
        return state, load_weights(weights_path)
    except Exception as err:
        raise damaged(weights_path, f"not a readable safetensors file ({_first_line(err)})") from None


def damaged(path: Path, reason: str) -> InputError:
    return InputError(f"damaged resume state {path}: {reason}; trainer.resume=false starts over")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 120 else line[:117] + "..."
