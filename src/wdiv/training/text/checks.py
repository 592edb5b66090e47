"""Early checks of a text run's config (called by training.validate in place of the image checks)."""

from __future__ import annotations

from pathlib import Path

from wdiv.errors import ConfigError
from wdiv.training.text import eda, hub, is_text_model
from wdiv.training.text.models import POOLINGS

SYNTH_MODES = ("replace", "add")
GENERATORS = ("ngram", "text_file", "hf_generate")


def check_text(cfg) -> None:
    model, data = cfg.model, cfg.data
    if not is_text_model(model):
        raise ConfigError(f"model: data={data.name} is text and model {model.get('id')} is not a text model (model=tiny_bert, hf_text or bert_base)")
    if str(data.get("modality", "image")) != "text":
        raise ConfigError(f"data: model {model.id} is a text model and data={data.name} is not text data (data=text_csv or data=hf_text)")
    spec = str(model.pretrained)
    if spec not in ("hub", "none") and not Path(spec).expanduser().is_file():
        raise ConfigError(f"model.pretrained: {spec!r} is neither hub, none nor an existing weights file")
    if str(model.get("dropout_at", "head")) not in ("head", "blocks", "both"):
        raise ConfigError(f"model.dropout_at: {model.dropout_at!r} is not one of head, blocks, both")
    if str(model.get("pooling", "auto")) not in POOLINGS:
        raise ConfigError(f"model.pooling: {model.pooling!r} is not one of {', '.join(POOLINGS)}")
    if str(data.name) == "hf_text":
        _check_hub_data(data)
    else:
        _check_files(data)
    for key in ("val_fraction", "test_fraction"):  # the stratified slices a split may be cut from
        value = data.get(key)
        if key in data and (not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1):
            raise ConfigError(f"data.{key}: {value!r} is not a fraction in (0, 1)")
    eda_cfg = data.get("eda") or {}
    eda.parse(cfg.aug.policy, eda_cfg.get("rate", 0.1), eda_cfg.get("share", 1.0))
    synth = cfg.get("synth")
    if synth is not None and str(synth.get("mode", "none")) != "none":
        if str(synth.mode) not in SYNTH_MODES:
            raise ConfigError(f"synth.mode: {synth.mode!r} is not replace or add for text (filtering is synth.filter=true)")
        if not isinstance(synth.get("filter"), bool):
            raise ConfigError(f"synth.filter: {synth.get('filter')!r} is not true or false (text synthetic data: synth=text_offline or text_file)")
        name = str((synth.get("generator") or {}).get("name"))
        if name not in GENERATORS:
            raise ConfigError(f"synth.generator.name: {name!r} is not a text generator ({', '.join(GENERATORS)})")


def _check_files(data) -> None:
    for key in ("train_file", "test_file"):
        value = data.get(key)
        if value in (None, "", "???") or not Path(str(value)).expanduser().is_file():
            raise ConfigError(f"data.{key}: file {value} does not exist")
    if data.get("val_file") and not Path(str(data.val_file)).expanduser().is_file():
        raise ConfigError(f"data.val_file: file {data.val_file} does not exist")
    for name, path in (data.get("ood_files") or {}).items():
        if not Path(str(path)).expanduser().is_file():
            raise ConfigError(f"data.ood_files.{name}: file {path} does not exist")


def _check_hub_data(data) -> None:
    """What can be told of data=hf_text without loading it (the splits are checked as they load)."""
    hub.check_source(data)
    if not data.get("train_split"):
        raise ConfigError("data.train_split: required for data=hf_text")
