"""One-command GPU check: does wdiv train and analyse well on this CUDA machine? (< 5 min on an H100)

    python scripts/gpu_check.py                  # on a CUDA machine; elsewhere: "no CUDA device", exit 0
    python scripts/gpu_check.py --device cpu --model vit_micro --epochs 2   # a dry run of the same steps

1. trains a CLIP-ViT-B/32-shaped model (model=clip_vit_b32: timm vit_base_patch32_clip_224; the
   OpenAI weights when they are already in $WDIV_CACHE, random init otherwise: no download) with
   wdiv's runner at 224 px on the digits set (bf16 autocast, DataLoader workers, a few hundred
   steps) and checks that the training loss falls;
2. times wdiv's loop against a bare PyTorch loop on the same model and data (images/s, ratio);
3. runs ``wdiv.analyze`` on the trained checkpoint with ``--device cuda`` and ``--device cpu``
   and checks that every layer's alpha agrees within 1e-6 (both timings shown).

Prints one table; exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
ALPHA_TOL = 1e-6
RATIO_TARGET = 0.9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu for a dry run of the same steps")
    p.add_argument("--model", default="clip_vit_b32", help="a configs/model/*.yaml name (default clip_vit_b32)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (about 22 steps each at batch 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam lr (random init learns faster than the 1e-5 fine-tuning recipe)")
    p.add_argument("--bench-rounds", type=int, default=2)
    p.add_argument("--bench-repeat", type=int, default=4, help="training split repeats per benchmark epoch")
    p.add_argument("--out", default=None, help="keep the run directory here (default: a temporary one)")
    return p.parse_args(argv)


def hub_weights(model: str) -> Path | None:
    """The model's hub weights if an earlier run already cached them (never downloaded here)."""
    from hydra import compose, initialize_config_dir

    from wdiv.train import CONFIG_DIR
    from wdiv.training.pretrained import hub_folder

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    path = hub_folder(cfg) / "model.safetensors"
    return path if path.is_file() else None


def train(args, run_dir: Path, cpus: int) -> dict:
    from hydra import compose, initialize_config_dir

    from wdiv.train import CONFIG_DIR
    from wdiv.training.checkpoint import load_resume
    from wdiv.training.runner import run, runtime

    weights = hub_weights(args.model)
    overrides = [
        "+exp=baseline", f"model={args.model}", f"model.pretrained={weights or 'none'}",
        f"trainer.device={args.device}", f"trainer.epochs={args.epochs}", "trainer.batch_size=32",
        f"optim.lr={args.lr}", "optim.schedule=constant", "optim.warmup_epochs=0",
        "trainer.threads=0", "trainer.progress=false", "diversity.compute=false",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    t0 = time.perf_counter()
    info = run(cfg, run_dir, cpus=cpus)
    seconds = time.perf_counter() - t0
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    steps = int(load_resume(run_dir / "checkpoints")[0]["step"])
    precision = "bf16" if info["device"].startswith("cuda") and str(cfg.trainer.precision) in ("auto", "bf16") else "fp32"
    return {"ok": info["status"] == "complete" and last < first, "first": first, "last": last, "epochs": len(rows),
            "what": f"{int(cfg.model.img_size)} px, {precision}, {runtime(cfg.trainer, cpus).num_workers} workers",
            "steps": steps, "seconds": seconds, "init": "hub weights" if weights else "random init",
            "img_s": sum(float(r["images_per_s"]) for r in rows[1:] or rows) / max(1, len(rows[1:] or rows))}


def throughput(args, cpus: int) -> dict:
    sys.path.insert(0, str(SCRIPTS))
    from bench_train import compare, parse_args as bench_args

    bench = bench_args(["--model", args.model, "--device", args.device, "--rounds", str(args.bench_rounds),
                        "--repeat", str(args.bench_repeat), "--threads", str(max(1, cpus)), "--no-progress"])
    r = compare(bench, cpus)
    r["ok"] = r["ratio"] >= RATIO_TARGET
    return r


def analyse(weights: Path, device: str, out: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wdiv.analyze", str(weights), "--out", str(out), "--device", device, "--quiet", "--force"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wdiv.analyze --device {device} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return time.perf_counter() - t0


def analyse_both(weights: Path, device: str, tmp: Path) -> dict:
    import pandas as pd

    t_dev = analyse(weights, device, tmp / "spectra_device.csv")
    t_cpu = analyse(weights, "cpu", tmp / "spectra_cpu.csv")
    a = pd.read_csv(tmp / "spectra_device.csv").set_index("longname")["alpha"]
    b = pd.read_csv(tmp / "spectra_cpu.csv").set_index("longname")["alpha"]
    same_layers = list(a.index) == list(b.index)
    both = a.notna() & b.notna()
    diff = float((a[both] - b[both]).abs().max()) if same_layers and both.any() else float("inf")
    nan_agree = same_layers and bool((a.isna() == b.isna()).all())
    return {"ok": same_layers and nan_agree and diff <= ALPHA_TOL, "layers": int(both.sum()) if same_layers else 0,
            "max_diff": diff, "t_device": t_dev, "t_cpu": t_cpu}


def table(rows: list[tuple[str, bool, str]]) -> str:
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{name.ljust(width)}  {'ok' if ok else 'FAIL':6}  {detail}" for name, ok, detail in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: gpu_check skipped")
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from wdiv.cpus import available_cpus

    cpus = available_cpus()
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu (dry run)"
    t_start = time.perf_counter()
    rows: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="wdiv_gpu_check_") as tmp:
        tmp = Path(tmp)
        run_dir = Path(args.out) if args.out else tmp / "run"
        try:
            t = train(args, run_dir, cpus)
            rows.append((f"train {args.model}", t["ok"], f"loss {t['first']:.3f} -> {t['last']:.3f} over {t['epochs']} epochs "
                         f"({t['steps']} steps, {t['what']}, {t['init']}), {t['img_s']:.0f} img/s, {t['seconds']:.0f} s"))
        except Exception as err:  # noqa: BLE001 - a check that cannot run is a failed check, named
            rows.append((f"train {args.model}", False, f"{type(err).__name__}: {err}"))
        try:
            b = throughput(args, cpus)
            rows.append(("loop throughput", b["ok"], f"wdiv {b['wdiv']:.0f} img/s vs bare {b['bare']:.0f} img/s: ratio {b['ratio']:.2f} "
                         f"(target >= {RATIO_TARGET}; {b['workers']} workers, bf16 {b['bf16']})"))
        except Exception as err:  # noqa: BLE001
            rows.append(("loop throughput", False, f"{type(err).__name__}: {err}"))
        weights = run_dir / "model.safetensors"
        if weights.is_file():
            try:
                a = analyse_both(weights, args.device, tmp)
                rows.append((f"analyze {args.device} vs cpu", a["ok"], f"max |d alpha| {a['max_diff']:.1e} over {a['layers']} layers "
                             f"(tol {ALPHA_TOL:g}); {args.device} {a['t_device']:.1f} s, cpu {a['t_cpu']:.1f} s"))
            except Exception as err:  # noqa: BLE001
                rows.append((f"analyze {args.device} vs cpu", False, f"{type(err).__name__}: {err}"))
        else:
            rows.append((f"analyze {args.device} vs cpu", False, "no trained checkpoint to analyse"))
    print(f"wdiv gpu_check on {name}, {cpus} CPU(s), torch {torch.__version__}, {time.perf_counter() - t_start:.0f} s")
    print(table(rows))
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
