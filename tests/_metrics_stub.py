"""Stand-in for wdiv.spectral.metrics, used by the plumbing tests only while that module is absent.

The CLI/API plumbing tests assert on files, rows and layer bookkeeping, never on these values.
"""

import sys
import types

import numpy as np


def layer_metrics(evals, *, N, M, rf=1, fit="ks", xmax=None, fix_fingers=None, mp_fit=True, rand_evals=None):
    ev = np.asarray(evals, dtype=float)
    return {"alpha": 2.0 + float(ev.mean() / ev.max()), "lambda_max": float(ev.max()),
            "log_norm": float(np.log10(ev.sum())), "log_spectral_norm": float(np.log10(ev.max())),
            "status": "success", "warning": ""}


def summarize(df):
    ok = df[df["status"] == "success"]
    return {c: float(ok[c].mean()) for c in ("alpha", "log_norm") if c in ok}


def install_if_missing():
    try:
        import wdiv.spectral.metrics  # noqa: F401
        return False
    except ImportError:
        mod = types.ModuleType("wdiv.spectral.metrics")
        mod.layer_metrics, mod.summarize = layer_metrics, summarize
        sys.modules["wdiv.spectral.metrics"] = mod
        import wdiv.spectral as pkg

        pkg.metrics = mod
        return True
