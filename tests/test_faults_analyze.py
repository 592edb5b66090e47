"""Faults and bad input on the analyze side (issue 12): damaged outputs are redone to the same
bytes, failures stay failed until they work, options are checked before any file is touched,
inputs are named for what they are, signals and kill -9 leave nothing half-written."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import wdiv.analysis_outputs as outputs
import wdiv.analyze as cli
from wdiv import records
from wdiv.io import atomic_path
from wdiv.spectral import analyze

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("spectra.csv", "spectra_base.csv", "esd.npz", "esd_base.npz", "spectra_summary.json")
ARGS = ["runs", "--base", "--save-esd"]


def _sd(seed, rows=40):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(rows, 30, generator=g), "b.weight": torch.randn(50, 20, generator=g),
            "conv.weight": torch.randn(16, 8, 3, 3, generator=g), "a.bias": torch.randn(rows, generator=g)}


def _make_tree(root: Path, n_runs: int = 2, rows: int = 40) -> Path:
    """root/pre.safetensors + root/runs/r<i>/{model.safetensors, run.json}; paths in run.json relative,
    so that a copy of root analysed from inside it gives byte-identical outputs."""
    root.mkdir(parents=True, exist_ok=True)
    save_file(_sd(99, rows), str(root / "pre.safetensors"))
    for i in range(n_runs):
        run = root / "runs" / f"r{i}"
        run.mkdir(parents=True)
        save_file(_sd(i, rows), str(run / "model.safetensors"))
        (run / "run.json").write_text(json.dumps({"status": "complete", "pretrained": {"path": "../../pre.safetensors"}}))
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tree analysed once with --base --save-esd: every analyze output exists."""
    root = _make_tree(tmp_path_factory.mktemp("faults") / "tree")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli.main([*ARGS, "-q"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture()
def tree(reference, tmp_path, monkeypatch):
    """A copy of the reference tree (mtimes kept), with the cwd inside it."""
    root = tmp_path / "tree"
    shutil.copytree(reference, root)
    monkeypatch.chdir(root)
    return root


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------ outputs that prove themselves


def test_the_record_describes_every_output(tree, capsys):
    meta = json.loads((tree / "runs/r0/spectra_summary.json").read_text())["wdiv"]
    assert sorted(meta["files"]) == sorted(OUTPUTS[:4])
    for name, entry in meta["files"].items():
        assert records.check(tree / "runs/r0" / name, entry) is None
        assert entry["sha256"] == records.describe(tree / "runs/r0" / name)["sha256"]
    assert meta["files"]["spectra.csv"]["rows"] == 3 and meta["files"]["esd.npz"]["arrays"] == 3
    assert meta["errors"] == []
    st = (tree / "runs/r0/model.safetensors").stat()
    assert meta["weights_files"] == {"model.safetensors": {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}}
    assert cli.main(ARGS) == 0  # the copy is up to date: nothing redone
    assert "0 written, 2 up to date" in capsys.readouterr().err


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path):
    p.write_bytes(b"")


def _random(p: Path):  # same size: only the hash can tell
    p.write_bytes(random.Random(0).randbytes(p.stat().st_size))


def _delete(p: Path):
    p.unlink()


def _drop_column(p: Path):
    pd.read_csv(p).drop(columns=["alpha"]).to_csv(p, index=False)


def _edit_value(p: Path):  # still parses, same columns and rows: only the hash (or the seal) can tell
    if p.suffix == ".json":
        obj = json.loads(p.read_text())
        obj["alpha"] = obj["alpha"] + 1.0
        p.write_text(json.dumps(obj, indent=2) + "\n")
    elif p.suffix == ".csv":
        df = pd.read_csv(p)
        df.loc[0, "alpha"] = df.loc[0, "alpha"] + 1.0
        df.to_csv(p, index=False)
    else:
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files}
        first = sorted(arrays)[0]
        arrays[first] = arrays[first] * 2
        np.savez(p.with_suffix(""), **arrays)  # np.savez adds .npz


DAMAGES = {"truncate": _truncate, "empty": _empty, "random": _random, "delete": _delete, "edit": _edit_value}
CASES = [(name, d) for name in OUTPUTS for d in DAMAGES] + [(n, "drop_column") for n in OUTPUTS if n.endswith(".csv")]


@pytest.mark.parametrize("name,damage", CASES)
def test_a_damaged_output_is_redone_to_the_original(tree, caplog, name, damage):
    before = _snapshot(tree)
    target = tree / "runs/r1" / name
    (DAMAGES.get(damage) or _drop_column)(target)
    with caplog.at_level(logging.WARNING, logger="wdiv.analyze"):
        assert cli.main(ARGS) == 0
    assert _snapshot(tree) == before  # every file, bytes and all (records, esd archives too)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and f"runs/r1/{name}" in lines[0] and "redone" in lines[0], lines
    assert cli.main(ARGS) == 0 and _snapshot(tree) == before


def test_an_output_made_without_a_record_of_its_files_is_redone(tree, capsys):
    summary = tree / "runs/r0/spectra_summary.json"
    obj = json.loads(summary.read_text())
    del obj["wdiv"]["files"], obj["wdiv"]["record_sha256"]  # as an older wdiv wrote it
    summary.write_text(json.dumps(obj))
    assert cli.main(ARGS) == 0
    assert "1 written, 1 up to date" in capsys.readouterr().err
    assert "files" in json.loads(summary.read_text())["wdiv"]


def test_changed_weights_are_redone(tree, capsys):
    w = tree / "runs/r0/model.safetensors"
    save_file(_sd(7), str(w))
    assert cli.main(ARGS) == 0
    assert "1 written, 1 up to date" in capsys.readouterr().err
    # the same bytes with another mtime (a copy without -p): redone too, to the same spectra
    before = (tree / "runs/r0/spectra.csv").read_bytes()
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    assert cli.main(ARGS) == 0
    assert "1 written" in capsys.readouterr().err and (tree / "runs/r0/spectra.csv").read_bytes() == before


def test_the_weights_sha256_that_run_json_records_is_part_of_the_identity(tree, capsys):
    run = tree / "runs/r0"
    info = json.loads((run / "run.json").read_text())
    info["files"] = {"model.safetensors": records.describe(run / "model.safetensors")}
    (run / "run.json").write_text(json.dumps(info))
    assert cli.main(ARGS) == 0  # bytes and mtime as recorded: a sha256 only now known changes nothing
    assert "0 written, 2 up to date" in capsys.readouterr().err
    assert cli.main([*ARGS, "--force", "-q"]) == 0
    ident = json.loads((run / "spectra_summary.json").read_text())["wdiv"]["weights_files"]["model.safetensors"]
    assert ident["sha256"] == info["files"]["model.safetensors"]["sha256"]
    assert cli.main(ARGS) == 0 and "0 written" in capsys.readouterr().err
    info["files"]["model.safetensors"]["sha256"] = "0" * 64  # training says these are other weights
    (run / "run.json").write_text(json.dumps(info))
    assert cli.main(ARGS) == 0 and "1 written" in capsys.readouterr().err


def test_old_leftovers_of_a_killed_writer_are_removed(tree):
    old = tree / "runs/r0/.spectra.csv.abc123.tmp"
    fresh = tree / "runs/r0/.spectra.csv.def456.tmp"  # a writer running now: kept
    old.write_text("half")
    fresh.write_text("half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert cli.main([*ARGS, "--force", "-q"]) == 0
    assert not old.exists() and fresh.exists()


# ------------------------------------------------------------------ failure is sticky


def test_failed_layers_stay_failed_until_they_work(tmp_path, capsys):
    bad = _sd(1)
    bad["b.weight"][3, 4] = float("nan")
    for name, sd in (("nan", bad), ("good", _sd(2))):
        (tmp_path / "runs" / name).mkdir(parents=True)
        save_file(sd, str(tmp_path / "runs" / name / "model.safetensors"))
    assert cli.main([str(tmp_path / "runs")]) == 1
    first = _errors(capsys.readouterr().err)
    assert len(first) == 1 and "nan/model.safetensors" in first[0] and "layer b" in first[0]
    meta = json.loads((tmp_path / "runs/nan/spectra_summary.json").read_text())["wdiv"]
    assert meta["errors"] == [first[0].removeprefix("error: ")]
    good = (tmp_path / "runs/good/spectra.csv").stat().st_mtime_ns
    for _ in range(2):  # never "up to date" with exit 0 after a failure: retried, fails the same way
        assert cli.main([str(tmp_path / "runs")]) == 1
        err = capsys.readouterr().err
        assert _errors(err) == first and "1 written, 1 up to date" in err
    assert (tmp_path / "runs/good/spectra.csv").stat().st_mtime_ns == good
    save_file(_sd(1), str(tmp_path / "runs/nan/model.safetensors"))  # fixed: works, and then up to date
    assert cli.main([str(tmp_path / "runs")]) == 0
    assert json.loads((tmp_path / "runs/nan/spectra_summary.json").read_text())["wdiv"]["errors"] == []
    assert cli.main([str(tmp_path / "runs")]) == 0
    assert "0 written, 2 up to date" in capsys.readouterr().err


def test_a_failed_reanalysis_is_retried_even_though_old_outputs_are_good(tree, monkeypatch, capsys):
    before = _snapshot(tree)
    real = cli.analyse_checkpoint
    broken = lambda w, *a, **k: cli.Outcome(errors=[f"{w}: RuntimeError: out of memory"])  # noqa: E731
    monkeypatch.setattr(cli, "analyse_checkpoint", broken)
    assert cli.main([*ARGS, "--force"]) == 1
    errs = _errors(capsys.readouterr().err)  # each run, that its reference failed, the reference
    assert len(errs) == 5 and sum("out of memory" in e for e in errs) == 3
    assert json.loads((tree / "runs/r0/spectra_summary.json").read_text())["wdiv"]["errors"]
    calls = []
    monkeypatch.setattr(cli, "analyse_checkpoint", lambda w, *a, **k: calls.append(w) or real(w, *a, **k))
    assert cli.main(ARGS) == 0  # retried (not "up to date"), and now it works
    assert len(calls) == 3 and _snapshot(tree) == before


# ------------------------------------------------------------------ options checked before work

BAD_OPTIONS = [
    (["--include", "("], "--include"),
    (["--exclude", "[z-a]"], "--exclude"),
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "two"], "--jobs"),
    (["--min-evals", "-1"], "--min-evals"),
    (["--max-evals", "0"], "--max-evals"),
    (["--min-evals", "20", "--max-evals", "10"], "--max-evals"),
    (["--max-N", "0"], "--max-N"),
    (["--farms", "--farms-window", "0"], "--farms-window"),
    (["--farms", "--farms-windows-per-dim", "-2"], "--farms-windows-per-dim"),
    (["--farms", "--farms-aspect-ratio", "0"], "--farms-aspect-ratio"),  # Q < 1 is the reference's too; 0 is not
    (["--farms", "--farms-preset", "nope"], "--farms-preset"),
    (["--farms", "--farms-xmin", "mid"], "--farms-xmin"),
    (["--farms-preset", "imagecls"], "--farms-preset"),  # without --farms
    (["--farms", "--farms-aspect-ratio", "nan"], "--farms-aspect-ratio"),
    (["--farms-window", "8"], "--farms-window"),  # without --farms it would be silently ignored
    (["--device", "gpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["--xmax", "nan"], "--xmax"),
    (["--xmax", "-2.5"], "--xmax"),
    (["--fit", "bogus"], "--fit"),
    (["--fit", "hill", "--fix-fingers", "clip_xmax"], "--fix-fingers"),
    (["--base", "no/such/reference.safetensors"], "--base"),
    (["runs/r1", "--out", "x.csv"], "--out"),  # two paths
    (["--out", "runs"], "--out"),  # a directory
]


@pytest.mark.parametrize("extra,flag", BAD_OPTIONS, ids=[" ".join(x) for x, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_exit_2_and_nothing_is_touched(tree, monkeypatch, capsys, extra, flag):
    for name in ("runs/r0/spectra.csv", "runs/r1/esd.npz"):
        (tree / name).unlink()  # work to do, if the options were good
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*")}
    opened = []
    monkeypatch.setattr(cli, "analyse_checkpoint", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(cli, "attach_bases", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(outputs, "weights_identity", lambda *a, **k: opened.append(a))
    code = _exit_code(["runs/r0", *extra])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith((f"error: {flag}: ", f"error: argument {flag}: ")), err
    assert not opened
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*")} == before


def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own errors (a type or a choice): one line too
        return exc.code


def test_a_bad_regex_is_one_line_not_one_per_checkpoint(tree, capsys):
    assert cli.main(["runs", "--include", "fc("]) == 2  # old: one line per checkpoint, exit 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --include: not a valid regular expression")


def test_out_with_a_tree_of_checkpoints_is_an_option_error(tree, capsys):
    before = _snapshot(tree)
    assert cli.main(["runs", "--out", "one.csv"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --out: needs a single checkpoint, runs holds 2"]
    assert _snapshot(tree) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_an_option_error(tree, capsys):
    assert cli.main(["runs", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --device: cuda asked for, but CUDA is not available here"]


# ------------------------------------------------------------------ inputs named for what they are


def _table(path):
    return analyze(path).drop(columns=["warning"], errors="ignore")


def test_hugging_face_layouts_are_found_and_read(tmp_path, capsys):
    sd = _sd(3)
    ref = _table(sd)
    hf = tmp_path / "models"
    (hf / "bin").mkdir(parents=True)
    torch.save(sd, hf / "bin" / "pytorch_model.bin")
    (hf / "pt").mkdir()
    torch.save({"state_dict": sd, "epoch": 2}, hf / "pt" / "model.pt")
    (hf / "sharded").mkdir()
    shards = {"pytorch_model-00001-of-00002.bin": ["a.weight", "a.bias"],
              "pytorch_model-00002-of-00002.bin": ["b.weight", "conv.weight"]}
    for fname, keys in shards.items():
        torch.save({k: sd[k] for k in keys}, hf / "sharded" / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (hf / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (hf / "st").mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(hf / "st" / "model-00001-of-00001.safetensors"))
    (hf / "st" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in sd}}))
    assert cli.main([str(hf)]) == 0  # a tree of them
    assert "4 written" in capsys.readouterr().err
    for name in ("bin", "pt", "sharded", "st"):
        got = pd.read_csv(hf / name / "spectra.csv").drop(columns=["warning"], errors="ignore")
        pd.testing.assert_frame_equal(got, ref, check_dtype=False, rtol=1e-12)
        assert not list((hf / name).glob("*.spectra.csv"))
    assert cli.main([str(hf / "sharded")]) == 0  # one of them, given by its folder: up to date
    assert "0 written, 1 up to date" in capsys.readouterr().err
    torch.save({k: sd[k] * 2 for k in shards["pytorch_model-00002-of-00002.bin"]},
               hf / "sharded" / "pytorch_model-00002-of-00002.bin")  # a shard changed: redone
    assert cli.main([str(hf / "sharded")]) == 0
    assert "1 written" in capsys.readouterr().err
    (hf / "sharded" / "pytorch_model-00001-of-00002.bin").unlink()
    assert cli.main([str(hf / "sharded")]) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert "pytorch_model-00001-of-00002.bin: shard listed in pytorch_model.bin.index.json is missing" in line


def test_a_file_in_no_weights_format_gets_one_plain_error(tmp_path, capsys):
    bad = []
    for name in ("notes.pt", "notes.bin", "model.safetensors", "weights.ckpt", "x.npz.pt"):
        p = tmp_path / name
        if name == "x.npz.pt":  # a zip archive, but not torch.save's
            with zipfile.ZipFile(p, "w") as zf:
                zf.writestr("a.npy", b"123")
        else:
            p.write_text("these are not weights\n" * 3)
        bad.append(p)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "pytorch_model.bin").write_text("git-lfs pointer, not the weights\n")
    assert cli.main([str(p) for p in bad] + [str(hf)]) == 1
    assert sorted(_errors(capsys.readouterr().err)) == sorted(
        f"error: not a safetensors or PyTorch file: {p}" for p in [*bad, hf / "pytorch_model.bin"])
    assert not list(tmp_path.rglob("*spectra*"))


def test_pytorch_files_are_loaded_weights_only(tmp_path, monkeypatch):
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("weights_only")) or real(*a, **k))
    torch.save(_sd(0), tmp_path / "pytorch_model.bin")
    assert len(analyze(tmp_path)) == 3
    assert seen and all(w is True for w in seen)


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_analyze_with_one_line_and_nothing_half_written(tree, monkeypatch, capsys, signum, code):
    before = _snapshot(tree)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    real = outputs.write_text
    writes = []

    def write_then_signal(path, text):  # the signal arrives inside the atomic write of the 3rd file
        writes.append(path)
        if len(writes) == 3:
            with atomic_path(path) as tmp:
                tmp.write_text(text[: len(text) // 2])
                os.kill(os.getpid(), signum)
                tmp.write_text(text)
        else:
            real(path, text)

    monkeypatch.setattr(outputs, "write_text", write_then_signal)
    assert cli.main([*ARGS, "--force", "--fit", "hill"]) == code
    err = capsys.readouterr().err.splitlines()
    assert err == [f"wdiv.analyze: interrupted by {signal.Signals(signum).name}; every file written is complete, "
                   "the same command goes on from there"]
    assert not list(tree.rglob("*.tmp"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # given back
    monkeypatch.setattr(outputs, "write_text", real)
    assert cli.main(ARGS) == 0 and _snapshot(tree) == before  # old option set's outputs: all redone


def _spawn(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "wdiv.analyze", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_change(root: Path, before: dict, proc, timeout=120):
    """Return once any output under root differs from `before` (the run is writing), or it ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for p in root.rglob("spectra*.csv"):
            try:
                if p.stat().st_mtime_ns != before.get(p):
                    return
            except FileNotFoundError:
                pass
        time.sleep(0.002)


@pytest.mark.slow  # real subprocesses: ~20 s on the shared 2-core box
@pytest.mark.parametrize("signum,code,jobs", [(signal.SIGTERM, 143, "1"), (signal.SIGINT, 130, "2")])
def test_a_real_signal_to_a_running_analyze(tmp_path, signum, code, jobs):
    root = _make_tree(tmp_path / "tree", n_runs=6, rows=400)
    proc = _spawn(["runs", "--jobs", jobs, "-q"], root)
    _wait_for_change(root, {}, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal (machine too fast for this check)")
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"wdiv.analyze: interrupted by {signal.Signals(signum).name}; every file "
                                        "written is complete, the same command goes on from there"]
    assert not list(root.rglob("*.tmp"))
    for summary in root.rglob("spectra_summary.json"):  # whatever was written is whole and recorded
        meta = json.loads(summary.read_text())["wdiv"]
        assert all(records.check(summary.parent / n, e) is None for n, e in meta["files"].items())


@pytest.mark.slow  # several subprocesses that import torch: ~1-2 min on the shared 2-core box
def test_kill_9_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
    src = _make_tree(tmp_path / "src", n_runs=5, rows=300)
    old_args = [*ARGS, "--fit", "hill"]  # outputs of other options are there, so every kill point lands in rewrites
    cwd = os.getcwd()
    os.chdir(src)
    try:
        assert cli.main([*old_args, "-q"]) == 0
    finally:
        os.chdir(cwd)
    clean = tmp_path / "clean"
    shutil.copytree(src, clean)
    # the uninterrupted run, timed from its first rewrite to its end: the kill points are drawn in
    # that span, so they land while outputs are being written however fast the machine is
    proc = _spawn([*ARGS, "-q"], clean)
    _wait_for_change(clean, {p: p.stat().st_mtime_ns for p in clean.rglob("spectra*.csv")}, proc)
    started = time.monotonic()
    assert proc.wait() == 0, proc.stderr.read()
    writing = time.monotonic() - started
    want = {k: v for k, v in _snapshot(clean).items()}
    rng = random.Random(12)
    killed = 0
    for trial in range(3):
        root = tmp_path / f"kill{trial}"
        shutil.copytree(src, root)
        before = {p: p.stat().st_mtime_ns for p in root.rglob("spectra*.csv")}
        proc = _spawn([*ARGS, "-q"], root)
        _wait_for_change(root, before, proc)
        time.sleep(rng.uniform(0.0, 0.8) * writing)
        proc.kill()
        killed += proc.wait() == -signal.SIGKILL
        os.chdir(root)
        try:
            assert cli.main([*ARGS, "-q"]) == 0
        finally:
            os.chdir(cwd)
        got = {k: v for k, v in _snapshot(root).items() if not Path(k).name.endswith(".tmp")}
        assert got == want, f"trial {trial}: {sorted(k for k in want if got.get(k) != want[k])}"
        for tmp in root.rglob("*.tmp"):  # what kill -9 can leave: a hidden temporary, never a half output
            assert tmp.name.startswith(".")
    assert killed, "every run finished before its kill point: nothing was checked"
