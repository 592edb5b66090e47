"""The text half: Hugging Face encoders with a fresh head, CSV/TSV/JSONL data, EDA, synthetic text.

A config is a text config when its model or its data says ``modality: text``; the shared runner,
loop and evaluation then run unchanged on token batches (``int64 [B, 2, L]``: ids and attention
mask), and these modules supply what differs: the model (:mod:`.models`), the tokenizer
(:mod:`.tokenizers`), the splits (:mod:`.data`), augmentation (:mod:`.eda`) and synthetic texts
(:mod:`.synthetic`). transformers is imported only when a Hugging Face model or tokenizer is built.
"""

from __future__ import annotations


def is_text_model(model_cfg) -> bool:
    return model_cfg is not None and str(model_cfg.get("modality", "image")) == "text"


def is_text(cfg) -> bool:
    """A run on text: its model or its data says ``modality: text``."""
    data = cfg.get("data")
    return is_text_model(cfg.get("model")) or (data is not None and str(data.get("modality", "image")) == "text")
