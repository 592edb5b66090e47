"""One tokenizer per model: texts -> ``int64 [N, 2, L]`` (token ids, attention mask), right-padded.

``model.tokenizer.kind``:
  words - a word-level vocabulary built from the real training texts (the tiny random-init model:
          no download, no files); ``[PAD] [UNK] [CLS] [SEP] [MASK]`` then the ``vocab_size - 5``
          most frequent lower-cased words (ties by the word), ``[CLS] w1 .. wk [SEP]``;
  hf    - ``transformers.AutoTokenizer`` of ``model.tokenizer.name`` (a hub id, downloaded only
          for a model the config asks for, or a local directory).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from wdiv.errors import ConfigError

WORD = re.compile(r"\w+|[^\w\s]")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def words(text: str, lowercase: bool = True) -> list[str]:
    """The word tokens of ``text`` (runs of word characters, single punctuation marks)."""
    return WORD.findall(text.lower() if lowercase else text)


class WordTokenizer:
    """Word-level tokenizer with a vocabulary fitted on training texts (deterministic)."""

    def __init__(self, vocab: Sequence[str], lowercase: bool = True):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.lowercase = lowercase
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (self.index[s] for s in SPECIALS[:4])

    @classmethod
    def fit(cls, texts: Sequence[str], vocab_size: int, lowercase: bool = True) -> "WordTokenizer":
        if vocab_size <= len(SPECIALS):
            raise ConfigError(f"model.tokenizer.vocab_size: {vocab_size} leaves no room beside {len(SPECIALS)} special tokens")
        counts = Counter(w for t in texts for w in words(t, lowercase))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - len(SPECIALS)]
        return cls([*SPECIALS, *ranked], lowercase)

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        out = torch.zeros((len(texts), 2, max_length), dtype=torch.int64)
        out[:, 0] = self.pad_id
        for i, text in enumerate(texts):
            ids = [self.cls_id, *(self.index.get(w, self.unk_id) for w in words(text, self.lowercase))][: max_length - 1] + [self.sep_id]
            out[i, 0, : len(ids)] = torch.tensor(ids)
            out[i, 1, : len(ids)] = 1
        return out


class HFTokenizer:
    """A transformers tokenizer behind the same call."""

    def __init__(self, name: str):
        from transformers import AutoTokenizer

        local = Path(name).expanduser().is_dir()
        try:
            self.tok = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if local else name, local_files_only=local)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.tokenizer.name: no tokenizer for {name!r} ({str(err).splitlines()[0]})") from None

    def __len__(self) -> int:
        return len(self.tok)

    def __call__(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        enc = self.tok(list(texts), max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).to(torch.int64)


def build_tokenizer(tok_cfg, train_texts: Sequence[str]):
    """The tokenizer ``model.tokenizer`` describes (``words`` is fitted on ``train_texts``)."""
    if tok_cfg is None:
        raise ConfigError("model.tokenizer: a text model needs a tokenizer (model=tiny_bert, hf_text or bert_base)")
    kind = str(tok_cfg.get("kind"))
    if kind == "words":
        return WordTokenizer.fit(train_texts, int(tok_cfg.vocab_size), bool(tok_cfg.get("lowercase", True)))
    if kind == "hf":
        return HFTokenizer(str(tok_cfg.name))
    raise ConfigError(f"model.tokenizer.kind: {kind!r} is not words or hf")
