"""wdiv.analyze vs WeightWatcher vs the eigensolver floor, in one process.

For each random-init timm model: WeightWatcher analyze() with its defaults, WeightWatcher
analyze(mp_fit=True) (the study's setting), wdiv's analyze() with its full default metric set
(MP fit included), and the floor = float64 eigvalsh of the Gram matrix of every matrix wdiv
analyses, nothing else, timed with torch's solver, numpy's, and numpy's per core, the
fastest taken (see floor_fns). Prints the three ratios per model.
Targets: wdiv/floor <= 1.5, WW(mp_fit)/wdiv >= 20, WW(default)/wdiv >= 3.

--scaling: the cost of many checkpoints instead. One random-init checkpoint (--scaling-model,
saved as model.safetensors) is hard-linked into 1, 4, 16 and 64 checkpoint directories, and
``python -m wdiv.analyze ROOT --jobs <cores> --force -q`` is timed on each tree in a fresh
process; seconds per checkpoint must stay flat as the count grows (the interpreter's start,
timed alone, is printed so the one-checkpoint row can be read, and "added s/ckpt" is the cost
of the checkpoints a row adds to the one before).

    python scripts/bench_analyze.py                      # the three models
    python scripts/bench_analyze.py --models resnet50 --skip-ww   # quick check
    python scripts/bench_analyze.py --scaling            # 1, 4, 16, 64 copies of vit_small
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _bench import best_time, silenced

MODELS = ["vit_small_patch16_224", "vit_base_patch16_224", "resnet50"]


def floor_fns(model) -> dict:
    """The eigensolver floor, three ways; the fastest is the floor.

    Each computes float64 eigvalsh of the Gram matrix of every matrix wdiv analyses, nothing
    else: torch (MKL) one matrix at a time with all threads; numpy (OpenBLAS) the same; and
    one thread per core with a single-threaded BLAS each, matrices shared out largest first,
    the Gram product by numpy and dsyevd called without the GIL (wdiv.spectral.lapack, the
    same LAPACK numpy uses).
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from threadpoolctl import threadpool_limits

    from wdiv.spectral.lapack import eigvalsh_inplace
    from wdiv.spectral.weights import open_weights, select_layers, to_matrices

    src = open_weights(model)
    mats = [m for spec in select_layers(src) for m in to_matrices(spec, src.tensor(spec.key))]
    arrays = sorted(mats, key=lambda a: -a.size * min(a.shape))

    def torch_serial():
        for w in mats:
            x = torch.from_numpy(w).to(torch.float64)
            torch.linalg.eigvalsh(x.T @ x)

    def numpy_serial():
        for a in arrays:
            x = a.astype(np.float64)
            np.linalg.eigvalsh(x.T @ x)

    def lapack_one(a):
        x = a.astype(np.float64)
        return eigvalsh_inplace(x.T @ x)

    def lapack_per_core():
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(torch.get_num_threads()) as pool:
            list(pool.map(lapack_one, arrays))

    return {"torch": torch_serial, "numpy": numpy_serial, "per-core": lapack_per_core}


def scaling(model_name: str, counts: list[int], jobs: int, tmp: str | None) -> None:
    """Seconds per checkpoint of the CLI on 1, 4, 16, 64 hard-linked copies of one checkpoint."""
    import timm
    from safetensors.torch import save_file

    root = Path(tempfile.mkdtemp(prefix="wdiv_bench_scaling_", dir=tmp))
    try:
        torch.manual_seed(0)
        model = timm.create_model(model_name, pretrained=False).eval()
        weights = root / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import wdiv.analyze, wdiv.spectral.api"], check=True)
        start = time.perf_counter() - t
        print(f"{model_name}: {weights.stat().st_size / 1e6:.0f} MB checkpoint, --jobs {jobs}; "
              f"interpreter start with imports {start:.1f} s", flush=True)
        print(f"{'copies':>6s} {'wall s':>8s} {'s/ckpt':>7s} {'added s/ckpt':>12s}", flush=True)
        last = None  # (copies, wall) of the previous row: the added checkpoints' cost excludes the start
        for n in counts:
            tree = root / f"x{n}"
            for i in range(n):
                (tree / f"ckpt{i:03d}").mkdir(parents=True)
                os.link(weights, tree / f"ckpt{i:03d}" / "model.safetensors")
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "wdiv.analyze", str(tree), "--jobs", str(jobs), "--force", "-q"],
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t
            if out.returncode != 0:
                sys.exit(f"wdiv.analyze on {n} copies exited {out.returncode}:\n{out.stderr[-2000:]}")
            done = len(list(tree.glob("*/spectra.csv")))
            if done != n:
                sys.exit(f"{n} copies: {done} spectra.csv written")
            added = (wall - last[1]) / (n - last[0]) if last and n > last[0] else float("nan")
            print(f"{n:6d} {wall:8.2f} {wall / n:7.2f} {added:12.2f}", flush=True)
            last = (n, wall)
            shutil.rmtree(tree)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--skip-ww", action="store_true", help="skip WeightWatcher (quick checks)")
    ap.add_argument("--repeat", type=int, default=3, help="wdiv, floor and WeightWatcher(default) timings: best of N")
    ap.add_argument("--mp-repeat", type=int, default=1,
                    help="WeightWatcher(mp_fit=True) timings: best of N (40-70 s a call here)")
    ap.add_argument("--scaling", action="store_true", help="time the CLI on 1, 4, 16, 64 copies of one checkpoint")
    ap.add_argument("--scaling-model", default="vit_small_patch16_224")
    ap.add_argument("--scaling-counts", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="--scaling: the CLI's --jobs (default: cores)")
    ap.add_argument("--tmp", default=None, help="--scaling: where the copies are made (deleted after)")
    args = ap.parse_args()
    if args.scaling:
        scaling(args.scaling_model, args.scaling_counts, args.jobs, args.tmp)
        return

    import timm

    from wdiv.spectral import analyze

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'model':24s} {'layers':>6s} {'WW':>8s} {'WW(mp)':>8s} {'wdiv':>7s} {'floor':>7s}  {'wdiv/floor':>10s} {'WW(mp)/wdiv':>11s} {'WW/wdiv':>8s}"
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        floors = {k: best_time(fn, args.repeat) for k, fn in floor_fns(model).items()}
        t_floor = min(floors.values())
        print(f"{name}: floor candidates " + ", ".join(f"{k} {v:.2f} s" for k, v in floors.items()), flush=True)
        t_wdiv = best_time(lambda: analyze(model), args.repeat)
        n_layers = len(analyze(model))
        t_ww = t_ww_mp = float("nan")
        if not args.skip_ww:
            with silenced():
                import weightwatcher as ww

                t_ww = best_time(lambda: ww.WeightWatcher(model=model).analyze(), args.repeat)
                t_ww_mp = best_time(lambda: ww.WeightWatcher(model=model).analyze(mp_fit=True), args.mp_repeat)
        rows.append(f"{name:24s} {n_layers:6d} {t_ww:8.2f} {t_ww_mp:8.2f} {t_wdiv:7.2f} {t_floor:7.2f}  "
                    f"{t_wdiv / t_floor:10.2f} {t_ww_mp / t_wdiv:11.1f} {t_ww / t_wdiv:8.1f}")
        print(header if len(rows) == 1 else "", rows[-1], sep="\n" if len(rows) == 1 else "", flush=True)
    print("seconds; targets: wdiv/floor <= 1.5, WW(mp)/wdiv >= 20, WW/wdiv >= 3")


if __name__ == "__main__":
    main()
