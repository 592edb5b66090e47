"""EDA (Wei & Zou 2019): random deletion, insertion, swap and synonym replacement of words.

A policy (``aug.policy`` of a text run) is ``OPS[-RATE[-SHARE]]``: ``OPS`` one of ``rd``, ``ri``,
``rs``, ``sr`` or a '+'-joined combination applied in that order (``rd+ri+rs+sr``), ``RATE`` the
word rate alpha (``data.eda.rate`` when omitted), ``SHARE`` the share of training rows rewritten
in an epoch (``data.eda.share`` when omitted); e.g. ``sr-0.3-0.5``. With n words and
k = max(1, round(alpha n)): rd drops each word with probability alpha (one word is always kept),
rs swaps two random words k times, sr replaces k distinct words that have synonyms, ri inserts k
synonyms of random words at random places.

Synonyms (``data.eda.synonyms``): ``wordnet`` (NLTK's WordNet, when nltk and its wordnet data are
installed), ``corpus`` (synonym-free: words drawn uniformly from the real training vocabulary),
``auto`` (wordnet if available, else corpus). The choice is logged and recorded in run.json.
Every draw comes from a ``random.Random`` seeded by the caller: the training set seeds it from the
loop's per-epoch torch RNG, so epochs differ and a resumed run replays them exactly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from wdiv.errors import ConfigError

log = logging.getLogger(__name__)

OPS = ("rd", "ri", "rs", "sr")
LEVELS = ["rd", "ri", "rs", "sr", "rd+ri+rs+sr"]  # the text augment arm's ordered operations


@dataclass(frozen=True)
class Policy:
    ops: tuple[str, ...]
    rate: float
    share: float

    @property
    def name(self) -> str:
        return f"{'+'.join(self.ops)}-{self.rate:g}-{self.share:g}"


def parse(policy, default_rate: float = 0.1, default_share: float = 1.0, key: str = "aug.policy") -> Policy | None:
    """``OPS[-RATE[-SHARE]]`` -> Policy; ``none``/empty -> None; ConfigError naming ``key`` otherwise."""
    text = str(policy).strip()
    if text in ("none", "", "None"):
        return None
    parts = text.split("-")
    if len(parts) > 3:
        raise ConfigError(f"{key}: {text!r} is not OPS[-RATE[-SHARE]] (e.g. sr-0.3-0.5)")
    ops = tuple(parts[0].split("+"))
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise ConfigError(f"{key}: unknown EDA operation {unknown[0] if unknown else ''!r} in {text!r} (known: {', '.join(OPS)}, '+'-joined)")
    try:
        rate = float(parts[1]) if len(parts) > 1 else float(default_rate)
        share = float(parts[2]) if len(parts) > 2 else float(default_share)
    except ValueError:
        raise ConfigError(f"{key}: {text!r}: rate and share must be numbers (e.g. sr-0.3-0.5)") from None
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"{key}: word rate {rate:g} in {text!r} is outside (0, 1]")
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"{key}: share {share:g} in {text!r} is outside [0, 1]")
    return Policy(ops, rate, share)


@lru_cache(maxsize=1)
def wordnet_available() -> bool:
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("good")
        return True
    except Exception:  # nltk missing, or its wordnet data not installed
        return False


@lru_cache(maxsize=50_000)
def _wordnet_synonyms(word: str) -> tuple[str, ...]:
    from nltk.corpus import wordnet

    found = {lemma.name().replace("_", " ").lower() for syn in wordnet.synsets(word) for lemma in syn.lemmas()}
    found.discard(word)
    return tuple(sorted(found))


class Synonyms:
    """Synonym source: WordNet, or (synonym-free) the real training vocabulary."""

    def __init__(self, source: str, vocabulary: Sequence[str] = ()):
        if source == "auto":
            source = "wordnet" if wordnet_available() else "corpus"
        if source == "wordnet" and not wordnet_available():
            raise ConfigError("data.eda.synonyms: wordnet asked for, but nltk with its wordnet data is not installed (pip install nltk; python -m nltk.downloader wordnet) - or use corpus")
        if source not in ("wordnet", "corpus"):
            raise ConfigError(f"data.eda.synonyms: {source!r} is not auto, wordnet or corpus")
        self.source = source
        self.vocabulary = sorted({w for w in vocabulary if w.isalpha()}) or ["the"]

    def of(self, word: str, rng: random.Random) -> str | None:
        if self.source == "wordnet":
            options = _wordnet_synonyms(word.lower())
            return rng.choice(options) if options else None
        return rng.choice(self.vocabulary)


def _k(rate: float, n: int) -> int:
    return max(1, round(rate * n))


def random_deletion(words: list[str], rate: float, rng: random.Random) -> list[str]:
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() >= rate]
    return kept or [rng.choice(words)]


def random_swap(words: list[str], rate: float, rng: random.Random) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_k(rate, len(out))):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def synonym_replacement(words: list[str], rate: float, rng: random.Random, synonyms: Synonyms) -> list[str]:
    out = list(words)
    order = [i for i in range(len(out)) if out[i].isalpha()]
    rng.shuffle(order)
    todo = _k(rate, len(out)) if out else 0
    for i in order:
        if todo == 0:
            break
        syn = synonyms.of(out[i], rng)
        if syn is not None and syn != out[i]:
            out[i] = syn
            todo -= 1
    return out


def random_insertion(words: list[str], rate: float, rng: random.Random, synonyms: Synonyms) -> list[str]:
    out = list(words)
    candidates = [w for w in words if w.isalpha()]
    for _ in range(_k(rate, len(words)) if words else 0):
        syn = None
        for _try in range(10):
            syn = synonyms.of(rng.choice(candidates), rng) if candidates else synonyms.of("", rng)
            if syn is not None:
                break
        if syn is not None:
            out.insert(rng.randrange(len(out) + 1), syn)
    return out


class EDA:
    """Rewrites one text by ``policy`` with the draws of a seeded ``random.Random``."""

    def __init__(self, policy: Policy, synonyms: Synonyms):
        self.policy, self.synonyms = policy, synonyms

    def __call__(self, text: str, rng: random.Random) -> str:
        words = text.split()
        for op in self.policy.ops:
            if op == "rd":
                words = random_deletion(words, self.policy.rate, rng)
            elif op == "rs":
                words = random_swap(words, self.policy.rate, rng)
            elif op == "sr":
                words = synonym_replacement(words, self.policy.rate, rng, self.synonyms)
            else:
                words = random_insertion(words, self.policy.rate, rng, self.synonyms)
        return " ".join(words)

    def record(self) -> dict:
        p = self.policy
        return {"policy": p.name, "ops": list(p.ops), "rate": p.rate, "share": p.share, "synonyms": self.synonyms.source}


def build(aug_policy, eda_cfg, vocabulary: Sequence[str]) -> EDA | None:
    """The EDA of a text run (``aug.policy`` with ``data.eda`` defaults), or None without one."""
    eda_cfg = eda_cfg or {}
    policy = parse(aug_policy, eda_cfg.get("rate", 0.1), eda_cfg.get("share", 1.0))
    if policy is None:
        return None
    synonyms = Synonyms(str(eda_cfg.get("synonyms", "auto")), vocabulary)
    if synonyms.source == "corpus" and any(o in ("sr", "ri") for o in policy.ops):
        log.warning("EDA %s: no WordNet installed, sr/ri draw words from the training vocabulary instead of synonyms (data.eda.synonyms=corpus)", policy.name)
    else:
        log.info("EDA %s with %s synonyms", policy.name, synonyms.source)
    return EDA(policy, synonyms)
