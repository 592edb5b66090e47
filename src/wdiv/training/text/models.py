"""Text classifiers: a Hugging Face encoder, dropout, and a fresh linear head on the pooled output.

``model.name``: ``tiny_bert`` (a random-init BERT built from ``model.config``, for tests and CPU)
or any encoder transformers' ``AutoModel`` builds: a hub id (``bert-base-uncased``) or a local
directory (e.g. a sentence-transformers all-MiniLM-L6-v2). The architecture is built from its
config with random weights; the pretrained weights come through ``model.pretrained=hub`` (the
shared runner loads them, head excluded, from the cache :func:`ensure_hf` fills), so the run's
reference weights are one safetensors file exactly as for vision.

Dropout (``model.dropout`` = p, ``model.dropout_at``):
  head   - dropout(p) on the pooled output, before the head (the paper's placement);
  blocks - the encoder's hidden and attention-probability dropout set to p;
  both   - both. ``model.encoder_dropout`` (null: the checkpoint's own value, 0.1 for BERT) is
           the encoder's in-block dropout when ``dropout_at=head``.
Pooling (``model.pooling``): ``auto`` = the encoder's pooler output (BERT: tanh(W [CLS])) when it
has one, else the first token's hidden state; ``pooler``, ``cls``, ``mean`` force one.

Batches are ``int64 [B, 2, L]`` (ids, attention mask); columns that are padding in every row of
the batch are trimmed before the encoder (right padding), which changes no prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from wdiv.errors import ConfigError
from wdiv.io import sha256_file, write_json
from wdiv.locks import locked
from wdiv.training.checkpoint import save_weights

log = logging.getLogger(__name__)

TINY = "tiny_bert"
POOLINGS = ("auto", "pooler", "cls", "mean")
# config attribute names of the in-block dropout, per architecture family (first found is used)
HIDDEN_DROPOUT = ("hidden_dropout_prob", "dropout", "hidden_dropout", "resid_pdrop")
ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


class TextClassifier(nn.Module):
    """encoder -> pooled [B, H] -> dropout -> head [B, classes]; state-dict keys ``encoder.*``, ``head.*``."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, dropout: float, pooling: str):
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.pooling = pooling

    @staticmethod
    def _trim(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = x[:, 0], x[:, 1]
        used = torch.nonzero(mask.any(0)).flatten()
        width = int(used[-1]) + 1 if len(used) else 1
        return ids[:, :width], mask[:, :width]

    def _encode(self, x: torch.Tensor):
        ids, mask = self._trim(x)
        return self.encoder(input_ids=ids, attention_mask=mask), mask

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        out, mask = self._encode(x)
        pooler = getattr(out, "pooler_output", None)
        if self.pooling in ("auto", "pooler") and pooler is not None:
            return pooler
        if self.pooling == "pooler":
            raise ConfigError(f"model.pooling: {type(self.encoder).__name__} has no pooler (use cls, mean or auto)")
        if self.pooling == "mean":
            return _mean(out.last_hidden_state, mask)
        return out.last_hidden_state[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pooled(x)))

    def mean_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Mask-weighted mean of the encoder's last hidden states (the text diversity embedding)."""
        out, mask = self._encode(x)
        return _mean(out.last_hidden_state, mask)


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path.resolve() if path.is_dir() else None


def encoder_config(model_cfg):
    """The transformers config of the encoder, with the dropout the model config asks for."""
    from omegaconf import OmegaConf

    name = str(model_cfg.name)
    p = float(model_cfg.get("dropout", 0.0))
    where = str(model_cfg.get("dropout_at", "head"))
    if where not in ("head", "blocks", "both"):
        raise ConfigError(f"model.dropout_at: {where!r} is not one of head, blocks, both")
    if name == TINY:
        from transformers import BertConfig

        extra = OmegaConf.to_container(model_cfg.get("config") or {}, resolve=True)
        try:
            config = BertConfig(**extra)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.config: {err}") from None
    else:
        from transformers import AutoConfig

        local = _local(name)
        try:
            config = AutoConfig.from_pretrained(str(local) if local else name, local_files_only=local is not None)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.name: no encoder config for {name!r} ({str(err).splitlines()[0]})") from None
    block_p = p if where in ("blocks", "both") else model_cfg.get("encoder_dropout")
    if block_p is not None:
        set_dropout(config, float(block_p))
    return config


def set_dropout(config, p: float) -> list[str]:
    """Set the encoder's hidden and attention dropout to ``p``; returns the attributes set."""
    done = []
    for names in (HIDDEN_DROPOUT, ATTENTION_DROPOUT):
        for attr in names:
            if hasattr(config, attr):
                setattr(config, attr, p)
                done.append(attr)
                break
    if not done:
        raise ConfigError(f"model.dropout_at: {type(config).__name__} has no dropout setting to change")
    return done


def create(model_cfg, num_classes: int) -> TextClassifier:
    """A randomly initialised text classifier (encoder from its config) for ``num_classes``."""
    from transformers import AutoModel

    p = float(model_cfg.get("dropout", 0.0))
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"model.dropout: {p} is outside [0, 1)")
    pooling = str(model_cfg.get("pooling", "auto"))
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
    config = encoder_config(model_cfg)
    encoder = AutoModel.from_config(config)
    where = str(model_cfg.get("dropout_at", "head"))
    return TextClassifier(encoder, num_classes, dropout=p if where in ("head", "both") else 0.0, pooling=pooling)


def ensure_hf(model_cfg, cache: Path) -> Path:
    """The pretrained encoder of ``model.name`` as ``encoder.*`` safetensors in ``cache``, made once.

    A local directory is read in place; a hub id is downloaded by transformers (network, first use
    only; ``HF_HUB_OFFLINE=1`` forbids it). ``pretrained.json`` beside it records name and sha256.
    """
    from transformers import AutoModel

    name = str(model_cfg.name)
    if name == TINY:
        raise ConfigError("model.pretrained: tiny_bert has no pretrained weights (use none)")
    local = _local(name)
    key = (local.name if local else name).replace("/", "_")
    folder = cache / "pretrained" / f"hf-{key}-{_short_hash(str(local) if local else name)}"
    weights = folder / "model.safetensors"
    with locked(folder.parent / f"{folder.name}.lock"):
        if weights.exists() and (folder / "pretrained.json").exists():
            return weights
        log.warning("reading pretrained encoder %s (%s; cached in %s)", name, "local directory" if local else "hub download on first use", folder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # weights the checkpoint lacks (e.g. a pooler) start the same everywhere
            try:
                encoder = AutoModel.from_pretrained(str(local) if local else name, local_files_only=local is not None)
            except (OSError, ValueError) as err:
                raise ConfigError(f"model.name: cannot load pretrained {name!r} ({str(err).splitlines()[0]})") from None
        save_weights({f"encoder.{k}": v for k, v in encoder.state_dict().items()}, weights)
        source = str(local) if local else name
        write_json(folder / "pretrained.json", {"kind": "hub", "config": {"name": source}, "sha256": sha256_file(weights)})
    return weights


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]
