"""Per-layer fit cost: wdiv's KS power-law + MP fits vs WeightWatcher 0.7.7's own, vs eigvalsh.

    python scripts/bench_fits.py [--repeat 3]

For each shape: the float64 eigvalsh of the Gram matrix (the floor the whole analysis is held
to), WeightWatcher's WWFit + mp_fit on that ESD, and wdiv's fit_power_law + mp_fit on it.
Prints the best-of-repeat times and the ratios, measured in this one run.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from _bench import best_time, silenced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shapes", default="1536x384,3072x768")
    args = parser.parse_args()

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with silenced():
        import weightwatcher as ww
        from weightwatcher.WW_powerlaw import WWFit
    from wdiv.spectral.mp import mp_fit
    from wdiv.spectral.powerlaw import EVALS_THRESH, fit_power_law

    watcher = ww.WeightWatcher()
    rng = np.random.default_rng(0)
    print(f"{'shape':>10} {'eigvalsh':>9} {'ww fits':>9} {'wdiv fits':>9} {'ww/wdiv':>8} {'wdiv/eig':>9}")
    for shape in args.shapes.split(","):
        n, m = (int(s) for s in shape.split("x"))
        w = (rng.standard_t(3, (n, m)) * 0.02).astype(np.float32).astype(np.float64)
        evals = np.sort(np.linalg.eigvalsh(w.T @ w))
        t_eig = best_time(lambda: np.linalg.eigvalsh(w.T @ w), args.repeat)

        def ww_fits():
            with silenced():
                WWFit(evals[evals > EVALS_THRESH])
                watcher.mp_fit(evals, n, m, 1, "", 0, 0, False, False, "", "b", 0.5, True, evals)

        def wdiv_fits():
            fit_power_law(evals)
            mp_fit(evals, N=n, M=m)

        t_ww = best_time(ww_fits, 1)
        t_wdiv = best_time(wdiv_fits, args.repeat)
        print(f"{shape:>10} {t_eig * 1e3:8.1f}ms {t_ww * 1e3:8.0f}ms {t_wdiv * 1e3:8.1f}ms "
              f"{t_ww / t_wdiv:7.0f}x {t_wdiv / t_eig:8.3f}x")


if __name__ == "__main__":
    main()
