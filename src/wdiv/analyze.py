"""python -m wdiv.analyze PATH [PATH ...]: spectra.csv (+ summary) beside every checkpoint.

PATH is a weights file, a run directory, a sharded checkpoint directory, or a tree of run
directories (every model.safetensors below it, resume checkpoints/ excluded). argparse, not
Hydra: Hydra would take the paths for overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wdiv.io import atomic_write, write_text

log = logging.getLogger("wdiv.analyze")

WEIGHT_FILE = "model.safetensors"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass
class Target:
    """One checkpoint to analyse and where its outputs go."""

    weights: Path
    csv: Path
    summary: Path
    run_dir: Path | None = None
    base: Path | None = None  # reference checkpoint, when deltas are wanted
    base_sha: str | None = None
    error: str | None = None  # set when the target cannot even be attempted

    @property
    def base_csv(self) -> Path:
        if "spectra" in self.csv.name:
            return self.csv.with_name(self.csv.name.replace("spectra", "spectra_base", 1))
        return self.csv.with_name(f"{self.csv.stem}_base{self.csv.suffix}")


@dataclass
class Outcome:
    df: object = None  # pandas.DataFrame
    errors: list[str] = field(default_factory=list)
    plots: int = 0
    esd: dict | None = None  # esd key -> eigenvalues, with --save-esd


def esd_key(row: dict) -> str:
    """The esd.npz key of a table row: its longname, plus '#slice<k>' for --per-slice rows."""
    return row["longname"] if "slice_id" not in row else f"{row['longname']}#slice{int(row['slice_id'])}"


def esd_path(csv: Path) -> Path:
    """esd.npz beside spectra.csv (spectra_base.csv -> esd_base.npz; <stem>.spectra.csv -> <stem>.esd.npz)."""
    return csv.with_name(csv.name.replace("spectra", "esd", 1).removesuffix(".csv") + ".npz")


# ------------------------------------------------------------------ discovery


def _outputs_for(weights: Path, out: str | None) -> tuple[Path, Path]:
    if out:
        csv = Path(out)
        return csv, csv.with_name(csv.stem + "_summary.json")
    folder = weights if weights.is_dir() else weights.parent
    if weights.is_dir() or weights.name == WEIGHT_FILE:
        return folder / "spectra.csv", folder / "spectra_summary.json"
    stem = weights.name.split(".")[0]
    return folder / f"{stem}.spectra.csv", folder / f"{stem}.spectra_summary.json"


def discover(paths: list[str], out: str | None = None) -> list[Target]:
    """Expand the CLI paths into targets; a path with nothing to analyse becomes an error target."""
    targets: list[Target] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() or (not p.exists() and p.suffix in SUFFIXES):
            csv, summ = _outputs_for(p, out)
            run_dir = p.parent if (p.parent / "run.json").is_file() and p.name == WEIGHT_FILE else None
            targets.append(Target(p, csv, summ, run_dir=run_dir))
            continue
        if not p.is_dir():
            targets.append(Target(p, p, p, error=f"{p}: no such file or directory"))
            continue
        if (p / WEIGHT_FILE).is_file() or list(p.glob("*.safetensors.index.json")):
            found = [p]
        else:
            found = sorted({f.parent for f in p.rglob(WEIGHT_FILE)} | {f.parent for f in p.rglob("*.safetensors.index.json")})
            found = [d for d in found if "checkpoints" not in d.relative_to(p).parts]
        if not found:
            targets.append(Target(p, p, p, error=f"{p}: no weights found (no {WEIGHT_FILE} or *.safetensors.index.json below it)"))
        for d in found:
            sharded = list(d.glob("*.safetensors.index.json"))
            weights = d if sharded and not (d / WEIGHT_FILE).is_file() else d / WEIGHT_FILE
            csv, summ = _outputs_for(weights, out if len(paths) == 1 and len(found) == 1 else None)
            targets.append(Target(weights, csv, summ, run_dir=d if (d / "run.json").is_file() else None))
    return targets


def attach_bases(targets: list[Target], base: str) -> None:
    """--base: an explicit reference for every target, or 'auto' = run.json's pretrained.path."""
    from wdiv.spectral.weights import file_sha256

    shas: dict[Path, str] = {}
    for t in targets:
        if t.error:
            continue
        if base != "auto":
            ref, sha = Path(base), None
        else:
            if t.run_dir is None:
                t.error = f"{t.weights}: --base without a path needs a run directory with run.json"
                continue
            try:
                pre = json.loads((t.run_dir / "run.json").read_text()).get("pretrained") or {}
            except (OSError, ValueError) as exc:
                t.error = f"{t.run_dir / 'run.json'}: unreadable ({exc})"
                continue
            if not pre.get("path"):
                t.error = f"{t.run_dir / 'run.json'}: no pretrained.path to use as --base"
                continue
            ref = Path(pre["path"])
            if not ref.is_absolute():  # relative to the run dir (a scratch run's initial.safetensors), never the cwd
                ref = t.run_dir / ref
            sha = pre.get("sha256")
        if not ref.exists():
            t.error = f"{ref}: reference checkpoint not found (for {t.weights})"
            continue
        if sha is None:
            if ref not in shas:
                shas[ref] = file_sha256(ref)
            sha = shas[ref]
        t.base, t.base_sha = ref, sha


# ------------------------------------------------------------------ analysis


def _set_threads(jobs: int) -> None:
    """Share the cores among `jobs` parallel checkpoints: torch's threads (the eigensolver's
    workers follow them) and, in a spawned worker process, numpy's BLAS threads too."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    torch.set_num_threads(threads)
    if jobs > 1:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")  # process-wide: this process is one job


def analyse_checkpoint(weights: Path, opts, plot_dir: Path | None = None, progress: bool = False,
                       jobs: int = 1, save_esd: bool = False, hash_weights: bool = False) -> Outcome:
    """Analyse one checkpoint; never raises for bad input: errors come back as lines.

    save_esd keeps each row's fitted eigenvalues (for esd.npz); hash_weights adds the
    weights_sha256 column (with --base, so the report can tell unchanged layers exactly)."""
    from wdiv.spectral.api import iter_layer_results, results_frame
    from wdiv.spectral.weights import WeightsError, layer_hashes, open_weights, select_layers

    _set_threads(jobs)
    outcome = Outcome(esd={} if save_esd else None)
    rows = []
    hashes: dict[str, str] = {}
    try:
        with open_weights(weights) as source:
            if plot_dir is not None:
                plot_dir.mkdir(parents=True, exist_ok=True)
            for res in iter_layer_results(source, opts, progress=progress, desc=str(weights)):
                rows.append(res.row)
                if save_esd and res.evals is not None:
                    outcome.esd[esd_key(res.row)] = np.asarray(res.evals, dtype=np.float64)
                if res.error:
                    outcome.errors.append(f"{weights}: layer {res.row['longname']}: {res.error}")
                if plot_dir is not None and res.evals is not None:
                    from wdiv.spectral.plots import save_esd_figure

                    tag = f"_{res.row['slice_id']}" if "slice_id" in res.row else ""
                    name = re.sub(r"[^\w.-]", "_", f"{res.row['layer_id']:04d}_{res.row['longname']}{tag}.png")
                    save_esd_figure(plot_dir / name, res.evals, res.row, res.rand_evals)
                    outcome.plots += 1
            if hash_weights:
                specs = select_layers(source, pool=opts.pool, min_evals=opts.min_evals, max_evals=opts.max_evals,
                                      max_N=opts.max_N, include=opts.include, exclude=opts.exclude)
                hashes = layer_hashes(source, specs)
    except WeightsError as exc:
        outcome.errors.append(str(exc))
        return outcome
    except Exception as exc:  # anything unexpected still names the file and spares the others
        outcome.errors.append(f"{weights}: {type(exc).__name__}: {exc}")
        return outcome
    if not rows:
        outcome.errors.append(f"{weights}: no layer to analyse (nothing passed the layer selection)")
        return outcome
    outcome.df = results_frame(rows)
    if hash_weights:
        outcome.df["weights_sha256"] = outcome.df["longname"].map(hashes)
    return outcome


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return v


def summary_dict(df, meta: dict) -> dict:
    """WeightWatcher get_summary-style means (failed fits excluded) + what produced them."""
    from wdiv.spectral import metrics

    means = metrics.summarize(df)
    out = {k: _jsonable(v) for k, v in dict(means).items()}
    out["wdiv"] = meta
    return out


def _meta(t: Target, opts, df, save_esd: bool = False) -> dict:
    status = df["status"] if "status" in df else None
    return {"weights": str(t.weights), "options": opts.fingerprint(), "base": str(t.base) if t.base else None,
            "base_sha256": t.base_sha, "n_layers": int(len(df)),
            "n_failed": int((status == "failed").sum()) if status is not None else 0,
            "esd_saved": bool(save_esd), "weights_hashed": "weights_sha256" in df}


def is_up_to_date(t: Target, opts, save_esd: bool = False) -> bool:
    """Outputs exist, are newer than the weights, and were made with the same options (and with
    esd.npz / the layer hashes when this run asks for them)."""
    if not (t.csv.is_file() and t.summary.is_file()):
        return False
    if t.base is not None and not t.base_csv.is_file():
        return False
    if save_esd and not (esd_path(t.csv).is_file() and (t.base is None or esd_path(t.base_csv).is_file())):
        return False
    try:
        meta = json.loads(t.summary.read_text()).get("wdiv", {})
    except (OSError, ValueError):
        return False
    newest = max(p.stat().st_mtime for p in ([t.weights] if t.weights.is_file() else t.weights.glob("*.safetensors*")))
    if t.base is not None and not meta.get("weights_hashed"):
        return False
    return (meta.get("options") == json.loads(json.dumps(opts.fingerprint())) and meta.get("base_sha256") == t.base_sha
            and t.csv.stat().st_mtime >= newest)


def write_esd(path: Path, esd: dict) -> None:
    """One compressed array of float64 eigenvalues per row (keys: esd_key), written atomically."""
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **esd)

    atomic_write(path, save)


def write_outputs(t: Target, opts, df, base_df=None, esd: dict | None = None, base_esd: dict | None = None) -> None:
    """spectra_base.csv / esd files first, spectra.csv next, the summary (the record) last."""
    from wdiv.spectral.api import add_deltas

    if base_df is not None:
        write_text(t.base_csv, base_df.to_csv(index=False))
        if base_esd is not None:
            write_esd(esd_path(t.base_csv), base_esd)
        df = add_deltas(df, base_df)
    if esd is not None:
        write_esd(esd_path(t.csv), esd)
    write_text(t.csv, df.to_csv(index=False))
    write_text(t.summary, json.dumps(summary_dict(df, _meta(t, opts, df, esd is not None)), indent=2, default=str) + "\n")


# ------------------------------------------------------------------ CLI


def _int_or_float(text: str):
    if text == "force":
        return text
    try:
        return int(text)
    except ValueError:
        return float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wdiv.analyze", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="weights file, run dir, or tree of run dirs")
    g = p.add_argument_group("metrics")
    g.add_argument("--fit", choices=["ks", "hill", "powerlaw"], default="ks", help="power-law estimator (default ks)")
    g.add_argument("--xmax", type=_int_or_float, default=None,
                   help="power-law fit upper cut: an integer k (e.g. -1) drops the |k| largest eigenvalues as "
                        "WeightWatcher does, a float cuts at that eigenvalue, 'force' as WeightWatcher")
    g.add_argument("--fix-fingers", choices=["clip_xmax"], default=None)
    g.add_argument("--no-mp-fit", action="store_true", help="skip the Marchenko-Pastur fit")
    g.add_argument("--randomize", action="store_true", help="also analyse element-permuted W")
    g.add_argument("--seed", type=int, default=0, help="seed of --randomize / --farms (default 0)")
    g.add_argument("--farms", action="store_true", help="alpha_farms: fixed-aspect-ratio submatrix ESD")
    g.add_argument("--farms-window", type=int, default=None, help="FARMS submatrix rows")
    g.add_argument("--farms-windows-per-dim", type=int, default=None, help="FARMS windows per dimension")
    g.add_argument("--farms-aspect-ratio", type=float, default=None, help="FARMS submatrix aspect ratio")
    s = p.add_argument_group("layers")
    s.add_argument("--pool", dest="pool", action="store_true", default=True, help="one ESD per conv layer (default)")
    s.add_argument("--per-slice", dest="pool", action="store_false", help="one row per conv kernel slice")
    s.add_argument("--include", default=None, help="regex: analyse only matching layer longnames")
    s.add_argument("--exclude", default=None, help="regex: skip matching layer longnames")
    s.add_argument("--min-evals", type=int, default=10)
    s.add_argument("--max-evals", type=int, default=15000)
    s.add_argument("--max-N", dest="max_N", type=int, default=50000)
    o = p.add_argument_group("outputs")
    o.add_argument("--base", nargs="?", const="auto", default=None,
                   help="reference checkpoint for delta_<metric> columns; without a value: run.json pretrained.path")
    o.add_argument("--out", default=None, help="spectra csv path (a single checkpoint only)")
    o.add_argument("--plot", action="store_true", help="one ESD PNG per layer under esd/ beside the csv")
    o.add_argument("--save-esd", action="store_true",
                   help="esd.npz beside spectra.csv (esd_base.npz with --base): the fitted eigenvalues of every row")
    o.add_argument("--force", action="store_true", help="redo outputs that are up to date")
    o.add_argument("--jobs", type=int, default=1, help="checkpoints analysed in parallel")
    o.add_argument("--device", default="cpu", help="cpu or cuda")
    o.add_argument("-q", "--quiet", action="store_true")
    return p


def options_from_args(args):
    from wdiv.spectral.options import AnalyzeOptions, FarmsOptions

    return AnalyzeOptions(
        fit=args.fit, xmax=args.xmax, fix_fingers=args.fix_fingers, mp_fit=not args.no_mp_fit,
        randomize=args.randomize, seed=args.seed, farms=args.farms,
        farms_options=FarmsOptions(args.farms_window, args.farms_windows_per_dim, args.farms_aspect_ratio),
        pool=args.pool, include=args.include, exclude=args.exclude, min_evals=args.min_evals,
        max_evals=args.max_evals, max_N=args.max_N, device=args.device)


def _run_all(jobs_in: dict, opts, plot_dirs: dict, jobs: int, progress: bool, save_esd: bool = False,
             hash_weights: bool = False) -> dict:
    """weights path -> Outcome, each distinct path analysed once (in parallel with jobs > 1)."""
    from tqdm.auto import tqdm

    results = {}
    if jobs <= 1 or len(jobs_in) <= 1:
        for key in tqdm(jobs_in, desc="checkpoints", unit="ckpt", disable=not progress or len(jobs_in) < 2):
            results[key] = analyse_checkpoint(jobs_in[key], opts, plot_dirs.get(key), progress=progress,
                                              save_esd=save_esd, hash_weights=hash_weights)
        return results
    # spawn, not fork: a forked child can hang on the parent's OpenMP/BLAS thread state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {key: pool.submit(analyse_checkpoint, path, opts, plot_dirs.get(key), False, jobs, save_esd, hash_weights)
                for key, path in jobs_in.items()}
        for key in tqdm(futs, desc="checkpoints", unit="ckpt", disable=not progress):
            results[key] = futs[key].result()
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    targets = discover(args.paths, args.out)
    if args.out and len(targets) > 1:
        print("error: --out needs a single checkpoint", file=sys.stderr)
        return 2
    if args.base:
        attach_bases(targets, args.base)
    errors = [t.error for t in targets if t.error]
    todo = [t for t in targets if not t.error and (args.force or not is_up_to_date(t, opts, args.save_esd))]
    for t in targets:
        if not t.error and t not in todo:
            log.info("%s: up to date, skipped (--force to redo)", t.csv)
    work = {str(t.weights): t.weights for t in todo}
    plot_dirs = {str(t.weights): t.csv.parent / "esd" for t in todo} if args.plot else {}
    bases = {t.base_sha: t.base for t in todo if t.base is not None}
    work.update({f"base:{sha}": path for sha, path in bases.items()})
    progress = not args.quiet and sys.stderr.isatty()
    results = _run_all(work, opts, plot_dirs, args.jobs, progress, save_esd=args.save_esd, hash_weights=bool(args.base))
    written = 0
    for t in todo:
        res = results[str(t.weights)]
        errors.extend(res.errors)
        base_res = results.get(f"base:{t.base_sha}") if t.base is not None else None
        if base_res is not None and base_res.df is None:
            errors.append(f"{t.weights}: reference {t.base} could not be analysed, outputs not written")
            continue
        if res.df is None:
            continue
        write_outputs(t, opts, res.df, base_res.df if base_res is not None else None, res.esd,
                      base_res.esd if base_res is not None else None)
        written += 1
    for sha, path in bases.items():
        errors.extend(f"(reference) {e}" for e in results[f"base:{sha}"].errors)
    for line in dict.fromkeys(errors):
        print(f"error: {line}", file=sys.stderr)
    skipped = len(targets) - len(todo) - sum(1 for t in targets if t.error)
    if not args.quiet:
        print(f"wdiv.analyze: {written} written, {skipped} up to date, {len(set(errors))} error(s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
