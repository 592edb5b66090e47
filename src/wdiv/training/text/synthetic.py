"""The synthetic arm for text: generated texts mixed into the real training split by two knobs.

p = ``synth.p``, N = |real|, class proportions kept (largest remainder):

* ``mode=replace, filter=false``: p N real rows (a seeded choice per class) are replaced by
  generated texts of the same class; the size stays N; p = 1 is 100 % synthetic.
* ``mode=add, filter=false``: p N generated texts are appended.
* ``filter=true``: the generated texts come from a pool ``synth.oversample`` times larger, of
  which a classifier fitted on the real split (TF-IDF word 1-2 grams + logistic regression) keeps
  those it labels right with probability >= ``synth.threshold``, first ones first. ``add`` appends
  up to p N of them; ``replace`` keeps (1 - p) N real rows plus up to p N filtered texts, so the
  set is smaller when the pool runs short. The study's "replace from the filtered pool at real
  share q" is ``mode=replace filter=true p=1-q``.

Generators (``synth.generator.name``): ``ngram`` (offline: per-class word n-gram chains fitted on
the real split, seconds on a CPU), ``text_file`` (a CSV/TSV/JSONL of texts generated elsewhere
with any LLM, labels in the real label space), ``hf_generate`` (a transformers text-generation
pipeline with per-class prompts and few-shot real examples; GPU; extra ``gen``). Generated sets
are cached under ``<cache>/synthetic_text`` keyed by generator config, seed, counts and real data.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wdiv.errors import ConfigError
from wdiv.io import sha256_json, write_text
from wdiv.training.text.files import read_table
from wdiv.variants import MODES

log = logging.getLogger(__name__)


def apportion(total: int, class_counts: np.ndarray) -> list[int]:
    """Split ``total`` over classes in proportion to ``class_counts`` (largest remainder)."""
    exact = total * class_counts / class_counts.sum()
    share = np.floor(exact).astype(int)
    order = np.argsort(-(exact - share), kind="stable")
    share[order[: total - share.sum()]] += 1
    return share.tolist()


class NgramGenerator:
    """Per-class word n-gram chains (order ``n``) fitted on the real texts of that class.

    Text i of class c is drawn by its own ``random.Random((seed, c, i))``: a larger request
    extends a smaller one, and any text can be regenerated alone.
    """

    name = "ngram"
    cacheable = True

    def __init__(self, cfg: dict):
        self.cfg = {"n": 2, "max_words": 60, **cfg}
        if int(self.cfg["n"]) < 1:
            raise ConfigError(f"synth.generator.n: {self.cfg['n']} is below 1")
        self.chains: dict[int, dict[tuple, list[str]]] = {}

    def cache_config(self) -> dict:
        return dict(self.cfg)

    def fit(self, texts: Sequence[str], labels: np.ndarray, classes: Sequence[str]) -> None:
        n = int(self.cfg["n"])
        for c in range(len(classes)):
            chain: dict[tuple, list[str]] = defaultdict(list)
            for i in np.flatnonzero(labels == c):
                words = ["<s>"] * (n - 1) + texts[i].split() + ["</s>"]
                for j in range(n - 1, len(words)):
                    chain[tuple(words[j - n + 1 : j])].append(words[j])
            self.chains[c] = dict(chain)

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[list[str], list[int]]:
        n, cap = int(self.cfg["n"]), int(self.cfg["max_words"])
        texts, labels = [], []
        for c, count in enumerate(counts):
            chain = self.chains.get(c)
            if count and not chain:
                raise ConfigError(f"synth.generator: class {c} has no real texts to fit the ngram generator on")
            for i in range(int(count)):
                rng = random.Random(f"{seed}-{c}-{i}")
                state, out = ("<s>",) * (n - 1), []
                while len(out) < cap:
                    nxt = rng.choice(chain.get(state) or ["</s>"])
                    if nxt == "</s>":
                        break
                    out.append(nxt)
                    state = (*state[1:], nxt) if n > 1 else ()
                texts.append(" ".join(out))
                labels.append(c)
        return texts, labels


class TextFileGenerator:
    """Generated texts from a file (``path``; ``text_column``/``label_column``; labels as in the real data)."""

    name = "text_file"
    cacheable = False

    def __init__(self, cfg: dict):
        self.cfg = {"text_column": "text", "label_column": "label", "format": "auto", **cfg}
        if self.cfg.get("path") in (None, "", "???"):
            raise ConfigError("synth.generator.path: the text_file generator needs a file of generated texts")
        self.by_class: dict[int, list[str]] = {}

    def cache_config(self) -> dict:
        return dict(self.cfg)

    def fit(self, texts, labels, classes: Sequence[str]) -> None:
        from omegaconf import OmegaConf

        file_texts, file_labels = read_table(self.cfg["path"], OmegaConf.create(self.cfg), "synth.generator.path")
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(file_labels) - set(index))
        if unknown:
            raise ConfigError(f"synth.generator.path: labels {unknown[:5]} are not among the real labels {list(classes)[:10]}")
        self.by_class = defaultdict(list)
        for t, y in zip(file_texts, file_labels):
            self.by_class[index[y]].append(t)

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[list[str], list[int]]:
        texts, labels = [], []
        for c, count in enumerate(counts):
            pool = self.by_class.get(c, [])
            if len(pool) < count:
                raise ConfigError(f"synth.generator.path: {self.cfg['path']} has {len(pool)} texts of class {c}, {count} needed")
            chosen = np.random.default_rng([seed, c]).permutation(len(pool))[: int(count)]
            texts += [pool[i] for i in sorted(chosen)]
            labels += [c] * int(count)
        return texts, labels


class HFGenerateGenerator:
    """A transformers text-generation pipeline, one prompt per class with few-shot real examples.

    ``pipeline`` may be passed in (anything called like a transformers text-generation pipeline).
    """

    name = "hf_generate"
    cacheable = True
    DEFAULTS = {
        "model_id": "Qwen/Qwen2.5-0.5B-Instruct",
        "prompt": "Write one more short text of the class '{name}', in the style of these examples.\n{examples}\nText:",
        "shots": 4,
        "max_new_tokens": 48,
        "temperature": 0.9,
        "batch_size": 16,
        "device": None,
    }

    def __init__(self, cfg: dict, pipeline: Any = None):
        self.cfg = {**self.DEFAULTS, **cfg}
        self._pipeline = pipeline
        self.examples: dict[int, list[str]] = {}
        self.classes: list[str] = []

    def cache_config(self) -> dict:
        return {k: v for k, v in sorted(self.cfg.items()) if k not in ("device", "batch_size")}

    def fit(self, texts, labels, classes) -> None:
        self.classes = list(classes)
        self.examples = {c: [texts[i] for i in np.flatnonzero(labels == c)] for c in range(len(classes))}

    def pipeline(self):
        if self._pipeline is None:
            try:
                import torch
                from transformers import pipeline
            except ImportError as e:
                raise ConfigError("synth.generator.name=hf_generate needs transformers: pip install 'wdiv[gen]'") from e
            device = self.cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
            log.info("loading %s on %s", self.cfg["model_id"], device)
            self._pipeline = pipeline("text-generation", model=self.cfg["model_id"], device=device)
        return self._pipeline

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[list[str], list[int]]:
        pipe = self.pipeline()
        texts, labels = [], []
        for c, count in enumerate(counts):
            for i in range(int(count)):
                rng = random.Random(f"{seed}-{c}-{i}")
                pool = self.examples.get(c) or [""]
                shots = rng.sample(pool, min(int(self.cfg["shots"]), len(pool)))
                prompt = str(self.cfg["prompt"]).format(name=self.classes[c], examples="\n".join(f"Text: {s}" for s in shots))
                try:
                    import transformers

                    transformers.set_seed(rng.randrange(2**31))
                except ImportError:
                    pass
                out = pipe(prompt, max_new_tokens=int(self.cfg["max_new_tokens"]), do_sample=True, temperature=float(self.cfg["temperature"]), return_full_text=False)
                text = str(out[0]["generated_text"]).strip().splitlines()
                texts.append(text[0].strip() if text else "")
                labels.append(c)
        return texts, labels


GENERATORS = {g.name: g for g in (NgramGenerator, TextFileGenerator, HFGenerateGenerator)}


def make_generator(gen_cfg: dict):
    name = str(gen_cfg.get("name"))
    if name not in GENERATORS:
        raise ConfigError(f"synth.generator.name: unknown text generator {name!r} ({', '.join(GENERATORS)})")
    return GENERATORS[name]({k: v for k, v in gen_cfg.items() if k != "name"})


def cached_generate(gen, texts, labels, counts, *, seed, classes, cache_dir) -> tuple[list[str], np.ndarray]:
    gen.fit(texts, labels, classes)
    path = None
    if gen.cacheable and cache_dir is not None:
        key = sha256_json({"generator": gen.name, "config": gen.cache_config(), "seed": seed, "counts": list(map(int, counts)), "real": sha256_json([list(texts), labels.tolist()])})[:16]
        path = Path(cache_dir) / f"{gen.name}-{key}.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            return [r["text"] for r in rows], np.array([r["label"] for r in rows], dtype=np.int64)
    out_texts, out_labels = gen.generate(counts, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, "".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(out_texts, out_labels)))
        log.info("generated texts cached at %s", path)
    return list(out_texts), np.asarray(out_labels, dtype=np.int64)


def filter_generated(real_texts, real_y, syn_texts, syn_y, wanted, threshold: float, seed: int) -> np.ndarray:
    """Rows of the generated texts to keep: per class the first ``wanted[c]`` the real-data classifier accepts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000, random_state=seed)).fit(real_texts, real_y)
    proba = clf.predict_proba(syn_texts) if len(syn_texts) else np.zeros((0, len(clf.classes_)))
    col = {c: j for j, c in enumerate(clf.classes_)}
    keep = []
    for c, w in enumerate(wanted):
        rows = np.flatnonzero(syn_y == c)
        if c in col and len(rows):
            ok = (clf.classes_[proba[rows].argmax(1)] == c) & (proba[rows, col[c]] >= threshold)
            rows = rows[ok]
        else:
            rows = rows[:0]
        if len(rows) < w:
            log.warning("synth filter: class %d kept %d of %d wanted generated texts", c, len(rows), w)
        keep.append(rows[:w])
    kept = np.concatenate(keep) if keep else np.zeros(0, dtype=int)
    log.info("synth filter: kept %d of %d generated texts (threshold %.2f)", len(kept), len(syn_y), threshold)
    return kept


def build_text_synthetic(real, synth_cfg, *, seed: int, cache_dir, make_set, eda=None, generator=None):
    """The mixed training set (a TextSet via ``make_set``) with ``info`` for run.json ``synth``."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(synth_cfg, resolve=True) if isinstance(synth_cfg, DictConfig) else dict(synth_cfg)
    mode, filt = cfg.get("mode"), cfg.get("filter", False)
    if mode not in MODES:
        raise ConfigError(f"synth.mode: {mode!r} is not replace or add for text (filtering is synth.filter=true)")
    if not isinstance(filt, bool):
        raise ConfigError(f"synth.filter: {filt!r} is not true or false")
    try:
        p = float(cfg.get("p"))
    except (TypeError, ValueError):
        raise ConfigError(f"synth.p: {cfg.get('p')!r} is not a number") from None
    if not 0.0 <= p <= (1.0 if mode == "replace" else math.inf):
        raise ConfigError(f"synth.p: {p!r} out of range for mode {mode} (replace: 0..1, add: >= 0)")
    threshold, oversample = float(cfg.get("threshold", 0.5)), float(cfg.get("oversample", 2.0))
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"synth.threshold: {threshold!r} is outside [0, 1]")
    if oversample < 1.0:
        raise ConfigError(f"synth.oversample: {oversample!r} is below 1")
    y = real.labels.numpy()
    classes = real.classes or [str(c) for c in range(int(y.max()) + 1)]
    wanted = apportion(round(p * len(y)), np.bincount(y, minlength=len(classes)))
    pool = [math.ceil(w * oversample) for w in wanted] if filt else wanted
    gen = generator if generator is not None else make_generator(cfg.get("generator") or {})
    syn_texts, syn_y = cached_generate(gen, real.texts, y, pool, seed=seed, classes=classes, cache_dir=cache_dir)
    if filt:
        rows = filter_generated(real.texts, y, syn_texts, syn_y, wanted, threshold, seed)
        syn_texts, syn_y = [syn_texts[i] for i in rows], syn_y[rows]
    rng = np.random.default_rng(seed)
    if mode == "replace":
        texts, labels, real_index, is_syn = _replace(real.texts, y, syn_texts, syn_y, wanted, rng)
        fidelity_rows = np.ones(len(texts), dtype=bool)
    else:
        texts, labels, real_index, is_syn = _append(real.texts, y, syn_texts, syn_y, rng)
        fidelity_rows = is_syn.copy()
    n_syn = int(is_syn.sum())
    info = {"mode": mode, "filter": filt, "p": p, "generator": gen.name, "n_real": len(labels) - n_syn, "n_synthetic": n_syn}
    log.info("synthetic text training set: %s", info)
    return make_set(texts, labels, eda=eda, real_index=real_index, is_synthetic=is_syn, fidelity_rows=fidelity_rows, info=info)


def _replace(real_texts, y, syn_texts, syn_y, wanted, rng):
    """Per class: ``wanted[c]`` seeded real rows go; as many generated texts as there are take their places."""
    texts, keep, is_syn = list(real_texts), np.ones(len(y), dtype=bool), np.zeros(len(y), dtype=bool)
    for c, w in enumerate(wanted):
        dst = rng.permutation(np.flatnonzero(y == c))[:w]
        src = np.flatnonzero(syn_y == c)[: len(dst)]
        for d, s in zip(dst, src):
            texts[d] = syn_texts[s]
            is_syn[d] = True
        keep[dst[len(src) :]] = False  # the filtered pool ran short: those rows are gone
    rows = np.flatnonzero(keep)
    return [texts[i] for i in rows], y[rows], rows, is_syn[rows]


def _append(real_texts, y, syn_texts, syn_y, rng):
    """Append generated texts; each stands for a same-class real row (seeded, spread evenly)."""
    aligned = np.empty(len(syn_y), dtype=np.int64)
    for c in np.unique(syn_y):
        rows = np.flatnonzero(syn_y == c)
        pool = rng.permutation(np.flatnonzero(y == c))
        aligned[rows] = pool[np.arange(len(rows)) % len(pool)]
    n = len(y)
    return list(real_texts) + list(syn_texts), np.r_[y, syn_y].astype(np.int64), np.r_[np.arange(n), aligned], np.r_[np.zeros(n, dtype=bool), np.ones(len(syn_y), dtype=bool)]
