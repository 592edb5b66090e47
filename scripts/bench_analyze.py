"""wdiv.analyze vs WeightWatcher vs the eigensolver floor, in one process.

For each random-init timm model: WeightWatcher analyze() with its defaults, WeightWatcher
analyze(mp_fit=True) (the study's setting), wdiv's analyze() with its full default metric set
(MP fit included), and the floor = float64 eigvalsh of the Gram matrix of every matrix wdiv
analyses, nothing else, timed with torch's solver, numpy's, and numpy's per core, the
fastest taken (see floor_fns). Prints the three ratios per model.
Targets: wdiv/floor <= 1.5, WW(mp_fit)/wdiv >= 20, WW(default)/wdiv >= 3.

    python scripts/bench_analyze.py                      # the three models
    python scripts/bench_analyze.py --models resnet50 --skip-ww   # quick check
"""

from __future__ import annotations

import argparse

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
    arrays = sorted((m.numpy() for m in mats), key=lambda a: -a.size * min(a.shape))

    def torch_serial():
        for w in mats:
            x = w.to(torch.float64)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--skip-ww", action="store_true", help="skip WeightWatcher (quick checks)")
    ap.add_argument("--repeat", type=int, default=3, help="wdiv, floor and WeightWatcher(default) timings: best of N")
    ap.add_argument("--mp-repeat", type=int, default=1,
                    help="WeightWatcher(mp_fit=True) timings: best of N (40-70 s a call here)")
    args = ap.parse_args()

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
