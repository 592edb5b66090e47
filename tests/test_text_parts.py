"""Pieces of the text half: the classifier and its dropout, weight-decay groups, files, EDA, synthetic texts, diversity."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("transformers")

from wdiv.diversity import measure_text_set, ngram_counts, ngram_vendi  # noqa: E402
from wdiv.errors import ConfigError  # noqa: E402
from wdiv.training import models  # noqa: E402
from wdiv.training.text import eda  # noqa: E402
from wdiv.training.text.data import TextSet  # noqa: E402
from wdiv.training.text.files import read_table  # noqa: E402
from wdiv.training.text.synthetic import TextFileGenerator, build_text_synthetic  # noqa: E402
from wdiv.training.text.tokenizers import WordTokenizer  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "text"
TINY = {
    "id": "tiny_bert", "modality": "text", "name": "tiny_bert", "pretrained": "none", "pooling": "auto", "encoder_dropout": None, "img_size": 0,
    "config": {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
COLS = OmegaConf.create({"text_column": "text", "label_column": "label", "format": "auto"})


def tiny(dropout=0.0, where="head", **extra):
    torch.manual_seed(0)
    return models.create(OmegaConf.create({**TINY, "dropout": dropout, "dropout_at": where, **extra}), 3)


def batch(n=4, length=12, pad=4):
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros((n, 2, length + pad), dtype=torch.int64)
    x[:, 0, :length] = torch.randint(5, 64, (n, length), generator=gen)
    x[:, 1, :length] = 1
    return x


@pytest.mark.parametrize("where", ["head", "blocks", "both"])
def test_dropout_acts_in_train_mode_only(where):
    x = batch()
    model = tiny(0.5, where).train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = tiny(0.0, where).train()
    assert torch.equal(plain(x), plain(x))


def test_dropout_at_sets_the_encoder_dropout_and_head_dropout():
    head, blocks, both = tiny(0.3, "head"), tiny(0.3, "blocks"), tiny(0.3, "both")
    assert (head.drop.p, head.encoder.config.hidden_dropout_prob, head.encoder.config.attention_probs_dropout_prob) == (0.3, 0.0, 0.0)
    assert (blocks.drop.p, blocks.encoder.config.hidden_dropout_prob, blocks.encoder.config.attention_probs_dropout_prob) == (0.0, 0.3, 0.3)
    assert (both.drop.p, both.encoder.config.hidden_dropout_prob) == (0.3, 0.3)
    # blocks only: the head input is not dropped, the encoder's activations are
    drops = [m.p for m in blocks.encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.3 for p in drops)
    assert tiny(0.0, "head", encoder_dropout=0.2).encoder.config.hidden_dropout_prob == 0.2
    assert blocks.state_dict().keys() == head.state_dict().keys()


def test_head_is_a_fresh_linear_layer_on_the_pooled_output_and_padding_is_trimmed():
    model = tiny().eval()
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 16 and model.head.out_features == 3
    keys = model.state_dict().keys()
    assert all(k.startswith(("encoder.", "head.")) for k in keys) and "encoder.pooler.dense.weight" in keys
    x = batch(pad=0)
    wide = batch(pad=10)
    with torch.no_grad():
        assert torch.allclose(model(x), model(wide), atol=1e-6)  # extra padding columns change nothing
        assert model.mean_pooled(x).shape == (4, 16)


def test_weight_decay_spares_layernorm_and_biases():
    from wdiv.training.optim import build_optimizer

    model = tiny()
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, OmegaConf.create({"name": "adam", "lr": 1e-3, "weight_decay": 1e-3, "eps": 1e-8}))
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "encoder.encoder.layer.0.attention.self.query.weight" in decayed and "head.weight" in decayed
    assert not any(n.endswith(".bias") or "LayerNorm" in n for n in decayed)
    assert any("LayerNorm.weight" in n for n in names.values())


def test_word_tokenizer_is_fitted_on_training_texts():
    tok = WordTokenizer.fit(["b a a", "c a, b"], vocab_size=8)
    assert tok.vocab[5:] == ["a", "b", ","]  # by frequency, ties by the word; only 3 room left after 5 specials
    out = tok(["A b zzz", "a a a a a a"], max_length=5)
    assert out.shape == (2, 2, 5) and out.dtype == torch.int64
    assert out[0, 0].tolist() == [tok.cls_id, 5, 6, tok.unk_id, tok.sep_id] and out[0, 1].tolist() == [1, 1, 1, 1, 1]
    assert out[1, 0, -1] == tok.sep_id  # truncated, still closed


def test_files_read_as_csv_tsv_and_jsonl_with_string_labels():
    texts, labels = read_table(FIX / "train.csv", COLS, "data.train_file")
    assert len(texts) == 160 and set(labels) == {"complaint", "no complaint"}
    tsv_texts, tsv_labels = read_table(FIX / "val.tsv", COLS, "data.val_file")
    assert len(tsv_texts) == 24 and set(tsv_labels) <= {"complaint", "no complaint"}
    jl_texts, _ = read_table(FIX / "ood_shuffled.jsonl", COLS, "data.ood_files.x")
    assert len(jl_texts) == 30 and jl_texts[0].isupper()
    with pytest.raises(ConfigError, match="^data.label_column:"):
        read_table(FIX / "train.csv", OmegaConf.merge(COLS, {"label_column": "target"}), "data.train_file")
    with pytest.raises(ConfigError, match="^data.test_file:"):
        read_table(FIX / "nope.csv", COLS, "data.test_file")


def test_label_order_is_sorted_numerically_or_given(tmp_path):
    from wdiv.training.text.data import label_order

    assert label_order(["10", "2", "1"], None) == ["1", "2", "10"]
    assert label_order(["b", "a"], None) == ["a", "b"]
    assert label_order(["b", "a"], ["b", "a"]) == ["b", "a"]
    with pytest.raises(ConfigError, match="^data.labels:"):
        label_order(["b", "a", "c"], ["b", "a"])


WORDS = "the quick brown fox jumps over the lazy dog near the old river bank".split()


@pytest.mark.parametrize("op", eda.OPS)
def test_each_eda_operation_rewrites_at_its_word_rate(op):
    text = " ".join(WORDS)
    aug = eda.build(f"{op}-0.3-1.0", {"synonyms": "corpus"}, ["alpha", "beta", "gamma"])
    outs = [aug(text, random.Random(s)).split() for s in range(20)]
    k = round(0.3 * len(WORDS))
    if op == "rd":
        assert all(len(o) < len(WORDS) for o in outs[:5]) and np.mean([len(o) for o in outs]) == pytest.approx(len(WORDS) * 0.7, abs=1.5)
    elif op == "rs":
        assert all(sorted(o) == sorted(WORDS) for o in outs) and any(o != WORDS for o in outs)
    elif op == "ri":
        assert all(len(o) == len(WORDS) + k for o in outs)
    else:
        assert all(len(o) == len(WORDS) and sum(a != b for a, b in zip(o, WORDS)) == k for o in outs)
    assert aug(text, random.Random(3)) == aug(text, random.Random(3))  # the seed fixes the rewrite


def test_eda_policy_parsing_and_synonym_choice():
    p = eda.parse("rd+sr-0.5-0.25")
    assert (p.ops, p.rate, p.share, p.name) == (("rd", "sr"), 0.5, 0.25, "rd+sr-0.5-0.25")
    assert eda.parse("rs", 0.2, 0.7) == eda.Policy(("rs",), 0.2, 0.7)
    assert eda.parse("none") is None
    for bad in ("flip", "rd-2", "rd-0.1-1.5", "rd-x"):
        with pytest.raises(ConfigError, match="^aug.policy:"):
            eda.parse(bad)
    assert eda.Synonyms("auto").source == ("wordnet" if eda.wordnet_available() else "corpus")
    if not eda.wordnet_available():
        with pytest.raises(ConfigError, match="^data.eda.synonyms:"):
            eda.Synonyms("wordnet")


def test_eda_training_set_rewrites_a_share_of_rows_per_epoch():
    tok = WordTokenizer.fit(WORDS, 64)
    texts = [" ".join(WORDS)] * 40
    ds = TextSet(texts, [0] * 40, tok, 24, eda=eda.build("rd-0.5-0.5", {}, WORDS))
    torch.manual_seed(1)
    first = torch.stack([ds[i][0] for i in range(40)])
    torch.manual_seed(1)
    again = torch.stack([ds[i][0] for i in range(40)])
    torch.manual_seed(2)
    other = torch.stack([ds[i][0] for i in range(40)])
    assert torch.equal(first, again) and not torch.equal(first, other)
    changed = int((first != ds.tokens).any(-1).any(-1).sum())
    assert 10 <= changed <= 30  # about half of the rows


def _real_set():
    texts, labels = read_table(FIX / "train.csv", COLS, "data.train_file")
    classes = sorted(set(labels))
    y = [classes.index(v) for v in labels]
    tok = WordTokenizer.fit(texts, 256)
    return texts, y, classes, lambda t, lab, **kw: TextSet(t, lab, tok, 32, classes=classes, **kw)


@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("filt", [False, True])
def test_synthetic_modes_and_filter(mode, filt, tmp_path):
    texts, y, classes, make = _real_set()
    real = make(texts, y)
    cfg = {"mode": mode, "filter": filt, "p": 0.5, "threshold": 0.6, "oversample": 2.0, "generator": {"name": "ngram", "n": 2}}
    out = build_text_synthetic(real, cfg, seed=0, cache_dir=tmp_path, make_set=make)
    n_syn = int(out.is_synthetic.sum())
    assert out.info == {"mode": mode, "filter": filt, "p": 0.5, "generator": "ngram", "n_real": len(out) - n_syn, "n_synthetic": n_syn}
    if mode == "replace":
        assert len(out) <= 160 and len(out) - n_syn == 80 and out.fidelity_rows.all()
        assert n_syn == 80 or filt  # without filter the size stays 160
    else:
        assert len(out) - n_syn == 160 and n_syn <= 80 and (n_syn == 80 or filt)
        assert (out.fidelity_rows == out.is_synthetic).all()
    assert np.bincount(out.labels[torch.from_numpy(out.is_synthetic)].numpy(), minlength=2).tolist() in ([40, 40], [n_syn // 2, n_syn - n_syn // 2], [n_syn - n_syn // 2, n_syn // 2]) or filt
    real_rows = ~out.is_synthetic
    assert [out.texts[i] for i in np.flatnonzero(real_rows)] == [texts[j] for j in out.real_index[real_rows]]
    assert (out.labels.numpy() == np.asarray(y)[out.real_index]).all()  # each row stands for a same-class real row
    assert len(list(tmp_path.glob("ngram-*.jsonl"))) == 1  # cached


def test_filter_drops_generated_texts_labelled_wrong(tmp_path):
    texts, y, classes, make = _real_set()
    real = make(texts, y)
    gen = TextFileGenerator({"path": str(tmp_path / "g.csv")})
    good = [t for t, c in zip(texts, y) if c == 0][:30] + [t for t, c in zip(texts, y) if c == 1][:30]
    labels = [classes[0]] * 30 + [classes[1]] * 30
    swapped = [classes[1]] * 10 + [classes[0]] * 10  # wrong labels: the filter must drop these
    rows = ["text,label"] + [f'"{t}",{lab}' for t, lab in zip(good + good[:10] + good[30:40], labels + swapped)]
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")
    out = build_text_synthetic(real, {"mode": "add", "filter": True, "p": 0.25, "threshold": 0.5, "oversample": 2.0, "generator": {}}, seed=0, cache_dir=None, make_set=make, generator=gen)
    syn = np.flatnonzero(out.is_synthetic)
    assert len(syn) == 40
    truth = dict(zip(good, [classes.index(v) for v in labels]))
    assert all(int(out.labels[i]) == truth[out.texts[i]] for i in syn)


def test_text_file_generator_refuses_labels_outside_the_real_ones(tmp_path):
    (tmp_path / "g.jsonl").write_text(json.dumps({"text": "hi", "label": "spam"}) + "\n")
    gen = TextFileGenerator({"path": str(tmp_path / "g.jsonl")})
    with pytest.raises(ConfigError, match="^synth.generator.path:.*spam"):
        gen.fit(["a"], np.array([0]), ["complaint", "no complaint"])


def test_ngram_vendi_counts_distinct_texts():
    assert ngram_vendi(["same words here"] * 5) == pytest.approx(1.0)
    assert ngram_vendi(["a", "b", "c", "d"]) == pytest.approx(4.0)
    assert ngram_counts(["a b a"], 2).tolist() == [[1.0, 1.0]]  # "a b", "b a"
    assert ngram_vendi(["a b", "b a"], 1) == pytest.approx(1.0) and ngram_vendi(["a b", "b a"], 2) == pytest.approx(2.0)


def test_text_diversity_follows_the_image_definitions(tmp_path):
    texts, y, classes, make = _real_set()
    real = make(texts, y)
    model = models.create(OmegaConf.create({**TINY, "config": {**TINY["config"], "vocab_size": 256}, "dropout": 0.0, "dropout_at": "head"}), 2)
    base = measure_text_set(real=real, train=real, encoder=model, cfg={"sample_size": 100}, seed=0)
    assert base["n"] == 100 and base["rho"] == pytest.approx(1.0) and base["weighted_vs"] == pytest.approx(base["vendi_embed"])
    augmented = make(texts, y, eda=eda.build("rd+ri+rs+sr-0.5-1.0", {"synonyms": "corpus"}, [w for t in texts for w in t.split()]))
    aug = measure_text_set(real=real, train=augmented, encoder=model, cfg={"sample_size": 100}, seed=0)
    assert aug["vendi_ngram"] > base["vendi_ngram"] and aug["rho"] < 1.0
    assert aug == measure_text_set(real=real, train=augmented, encoder=model, cfg={"sample_size": 100}, seed=0)
    syn = build_text_synthetic(real, {"mode": "add", "filter": False, "p": 0.5, "generator": {"name": "ngram"}}, seed=0, cache_dir=None, make_set=make)
    mixed = measure_text_set(real=real, train=syn, encoder=model, cfg={"sample_size": 100}, seed=0)
    assert 0.0 < mixed["rho"] < 1.0 and mixed["weighted_vs"] == pytest.approx(mixed["vendi_embed"] * mixed["rho"])
    assert measure_text_set(real=real, train=real, encoder=None, cfg=None, seed=0)["vendi_embed"] is None


def test_hf_generate_prompts_each_class_with_few_shot_real_examples():
    from wdiv.training.text.synthetic import HFGenerateGenerator

    prompts = []

    def fake_pipeline(prompt, **kwargs):
        prompts.append(prompt)
        assert kwargs["do_sample"] and kwargs["return_full_text"] is False
        return [{"generated_text": f" generated {len(prompts)}\nsecond line ignored"}]

    gen = HFGenerateGenerator({"shots": 2}, pipeline=fake_pipeline)
    gen.fit(["late again", "lost bag", "great crew"], np.array([0, 0, 1]), ["complaint", "no complaint"])
    texts, labels = gen.generate([2, 1], seed=0)
    assert texts == ["generated 1", "generated 2", "generated 3"] and labels == [0, 0, 1]
    assert "'complaint'" in prompts[0] and ("late again" in prompts[0] and "lost bag" in prompts[0])
    assert "'no complaint'" in prompts[2] and "great crew" in prompts[2] and "late again" not in prompts[2]
