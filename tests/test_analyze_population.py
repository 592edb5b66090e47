"""wdiv.analyze over a population: --executor submitit-local job arrays (resume, --no-wait, one
summary) and the --summary population table."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import wdiv.analysis_args as analysis_args
import wdiv.analysis_population as population
import wdiv.analyze as cli
from wdiv.analysis_executor import ChunkReport, JOBS_FOLDER, _job_report
from wdiv.analysis_outputs import read_record
from wdiv.spectral import metrics

pytest.importorskip("submitit")

BROKEN = "m3"
BROKEN_LINE = f"not a safetensors or PyTorch file: zoo/{BROKEN}/model.safetensors"


def _weights(path: Path, seed: int, rows: int = 24) -> None:
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"fc1.weight": torch.randn(rows, 16, generator=g), "fc2.weight": torch.randn(12, rows, generator=g)},
              str(path))


def _zoo(root: Path, n: int = 6, rows: int = 24) -> Path:
    """n tiny checkpoints m0..m<n-1>; m3 is not a weights file at all."""
    for i in range(n):
        if f"m{i}" == BROKEN:
            (root / BROKEN).mkdir(parents=True)
            (root / BROKEN / "model.safetensors").write_bytes(b"these bytes are no safetensors header")
        else:
            _weights(root / f"m{i}" / "model.safetensors", i, rows)
    return root


def _stamps(root: Path, names) -> dict:
    """(inode, mtime_ns) of every output of these checkpoints: equal = not rewritten."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for n in names for p in sorted((root / n).glob("spectra*"))}


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _recomputed_row(zoo: Path, name: str) -> dict:
    """A population row computed again from the checkpoint's own files."""
    folder = zoo / name
    table = pd.read_csv(folder / "spectra.csv")
    summary = json.loads((folder / "spectra_summary.json").read_text())
    means = metrics.summarize(table)
    assert set(means) <= set(summary)  # the record's means are the table's
    row = {"path": f"{name}/model.safetensors", "status": "ok",
           "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
           "n_layers": len(table), "n_failed": int((table["status"] == "failed").sum()),
           "options": json.dumps(summary["wdiv"]["options"], sort_keys=True),
           "record_sha256": summary["wdiv"]["record_sha256"]}
    row.update({k: float(v) for k, v in means.items()})
    return row


def _assert_population(csv: Path, zoo: Path, ok: list[str], failed: dict[str, str]) -> pd.DataFrame:
    got = pd.read_csv(csv, keep_default_na=False, na_values=[""]).set_index("path")
    assert sorted(got.index) == sorted(f"{n}/model.safetensors" for n in ok + list(failed))
    for name in ok:
        want = _recomputed_row(zoo, name)
        means = [c for c in got.columns if c not in population.FIRST + population.LAST]
        assert means == list(metrics.summarize(pd.read_csv(zoo / name / "spectra.csv")))
        row = got.loc[want.pop("path")]
        for key, value in want.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
            else:
                assert row[key] == value, key
    for name, line in failed.items():
        row = got.loc[f"{name}/model.safetensors"]
        assert (row["status"], row["error"]) == ("failed", line)
        assert np.isnan(row["alpha"]) and np.isnan(row["n_layers"])
        assert row["sha256"] == hashlib.sha256((zoo / name / "model.safetensors").read_bytes()).hexdigest()
    return got


def _wait_for_results(folder: Path, n: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while len(list(folder.glob("*_result.pkl"))) < n:
        assert time.time() < deadline, f"{folder}: no result after {timeout} s"
        time.sleep(0.2)


def test_a_population_through_submitit_local_jobs_resumes_and_matches_in_process(tmp_path, monkeypatch, capsys):
    zoo = _zoo(tmp_path / "zoo")
    shutil.copytree(zoo, tmp_path / "here")  # the same weights, analysed in this process
    monkeypatch.chdir(tmp_path)
    assert cli.main(["here", "-q"]) == 1
    # an interrupted population analysis: two checkpoints were finished before it stopped
    assert cli.main(["zoo/m0", "zoo/m1", "-q"]) == 0
    finished = _stamps(zoo, ["m0", "m1"])
    capsys.readouterr()

    code = cli.main(["zoo", "--executor", "submitit-local", "--per-job", "2", "--summary", "population.csv"])
    out, err = capsys.readouterr()
    assert code == 1
    assert _errors(err) == [f"error: {BROKEN_LINE}"]
    (folder,) = (zoo / JOBS_FOLDER).iterdir()
    assert err.splitlines()[-1] == f"wdiv.analyze: 3 analysed, 2 up to date, 1 failed (job logs: {folder.relative_to(tmp_path)})"
    assert len(list(folder.glob("*_result.pkl"))) == 2  # 4 checkpoints still to do, 2 per job
    assert _stamps(zoo, ["m0", "m1"]) == finished  # not redone
    for name in ["m0", "m1", "m2", "m4", "m5"]:  # the jobs write what this process writes
        assert (zoo / name / "spectra.csv").read_bytes() == (tmp_path / "here" / name / "spectra.csv").read_bytes()
        a, b = (json.loads((root / name / "spectra_summary.json").read_text()) for root in (zoo, tmp_path / "here"))
        assert {k: v for k, v in a.items() if k != "wdiv"} == {k: v for k, v in b.items() if k != "wdiv"}
    assert not (zoo / BROKEN / "spectra_summary.json").exists()
    _assert_population(tmp_path / "population.csv", zoo, ["m0", "m1", "m2", "m4", "m5"], {BROKEN: BROKEN_LINE})

    # the broken checkpoint is replaced: --no-wait submits it alone and returns at once
    _weights(zoo / BROKEN / "model.safetensors", 3)
    done = _stamps(zoo, ["m0", "m1", "m2", "m4", "m5"])
    assert cli.main(["zoo", "--executor", "submitit-local", "--no-wait"]) == 0
    out, err = capsys.readouterr()
    (second,) = set((zoo / JOBS_FOLDER).iterdir()) - {folder}
    job_id = out.split(" job(s): ")[1].split(";")[0]
    assert out.strip() == (f"wdiv.analyze: 1 checkpoint(s) in 1 job(s): {job_id}; logs in {second.relative_to(tmp_path)}; "
                           "the same command without --no-wait collects them")
    _wait_for_results(second, 1)
    assert (second / f"{job_id}_0_result.pkl").is_file()

    # everything is done: nothing is submitted, nothing rewritten, the table lists all six
    assert cli.main(["zoo", "--executor", "submitit-local", "--summary", "population.csv"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "wdiv.analyze: 0 analysed, 6 up to date, 0 failed"
    assert len(list((zoo / JOBS_FOLDER).iterdir())) == 2
    assert _stamps(zoo, ["m0", "m1", "m2", "m4", "m5"]) == done
    _assert_population(tmp_path / "population.csv", zoo, ["m0", "m1", "m2", "m3", "m4", "m5"], {})


class _DeadJob:
    job_id = "4242_1"

    def __init__(self, folder: Path):
        self.paths = type("Paths", (), {"stderr": folder / "4242_1_0_log.err"})()

    def exception(self):
        return RuntimeError("Job 4242_1 (task: 0) failed\nsubmitit traceback...\nslurmstepd: error: Exceeded memory")


def test_a_dead_job_fails_only_what_it_left_undone_naming_its_log(tmp_path, monkeypatch):
    zoo = _zoo(tmp_path / "zoo", n=3)
    monkeypatch.chdir(tmp_path)
    targets = cli.discover(["zoo"])
    assert cli.main(["zoo/m0", "-q"]) == 0  # the job wrote this one's record before it died
    report = _job_report(_DeadJob(zoo / JOBS_FOLDER), targets, since=time.time() - 60)
    line = f"job 4242_1 failed (slurmstepd: error: Exceeded memory); log {zoo / JOBS_FOLDER / '4242_1_0_log.err'}"
    assert report == ChunkReport(analysed=["zoo/m0/model.safetensors"], failed={
        f"zoo/{n}/model.safetensors": [f"zoo/{n}/model.safetensors: not analysed: {line}"] for n in ("m1", "m2")})
    old = _job_report(_DeadJob(zoo / JOBS_FOLDER), targets, since=time.time() + 60)  # a record from before the job
    assert old.analysed == [] and len(old.failed) == 3


def test_a_dead_job_counts_a_failed_analysis_it_recorded_as_failed(tmp_path, monkeypatch):
    """The job analysed m0, the analysis failed (a NaN layer; its record says so), then the job died."""
    zoo = _zoo(tmp_path / "zoo", n=1)
    bad = {"fc1.weight": torch.full((24, 16), float("nan")), "fc2.weight": torch.randn(12, 24)}
    save_file(bad, str(zoo / "m0" / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    targets = cli.discover(["zoo"])
    assert cli.main(["zoo", "-q"]) == 1
    report = _job_report(_DeadJob(zoo / JOBS_FOLDER), targets, since=time.time() - 60)
    assert report.analysed == [] and list(report.failed) == ["zoo/m0/model.safetensors"]
    assert "layer fc1" in report.failed["zoo/m0/model.safetensors"][0]


def test_a_requeued_job_does_not_redo_what_it_finished_even_with_force():
    """submitit's checkpoint(): the resubmitted job runs the same chunk without --force."""
    from wdiv.analysis_executor import ChunkJob

    job = ChunkJob(print, "opts", {"force": True, "save_esd": True})
    again = job.checkpoint(["chunk"])
    assert again.function.settings == {"force": False, "save_esd": True} and again.args == (["chunk"],)
    assert again.function.cwd == job.cwd and job.settings["force"] is True


@pytest.mark.parametrize("extra,line", [
    (["--executor", "slurm"], "--executor slurm: no sbatch here (run it where SLURM jobs are submitted, "
                              "or use --executor submitit-local)"),
    (["--partition", "gpu"], "--partition: needs --executor slurm"),
    (["--executor", "submitit-local", "--mem", "8"], "--mem: needs --executor slurm"),
    (["--no-wait"], "--no-wait: needs --executor slurm or submitit-local"),
    (["--per-job", "4"], "--per-job: needs --executor slurm or submitit-local"),
    (["--executor", "submitit-local", "--per-job", "0"], "--per-job: must be > 0, got 0"),
    (["--executor", "submitit-local", "--no-wait", "--summary", "p.csv"],
     "--summary: needs the jobs to finish: drop --no-wait (rerun with --summary once they end)"),
    (["--executor", "submitit-local", "--out", "x.csv"], "--out: a single checkpoint is analysed here: drop --executor"),
    (["--summary", "zoo"], "--summary: zoo is a directory (give the csv's path)"),
    (["--executor", "sge"], "argument --executor: invalid choice: 'sge' (choose from 'local', 'submitit-local', "
                            "'slurm') (python -m wdiv.analyze --help)"),
])
def test_a_bad_executor_option_is_one_line_exit_2_and_nothing_is_written(tmp_path, monkeypatch, capsys, extra, line):
    _zoo(tmp_path / "zoo", n=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(analysis_args.shutil, "which", lambda name: None)  # no SLURM here, whatever the machine
    before = sorted(tmp_path.rglob("*"))
    try:
        code = cli.main(["zoo", *extra])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {line}"]
    assert sorted(tmp_path.rglob("*")) == before


def test_without_submitit_the_executor_is_an_option_error(tmp_path, monkeypatch, capsys):
    _zoo(tmp_path / "zoo", n=1)
    real = analysis_args.importlib.util.find_spec
    monkeypatch.setattr(analysis_args.importlib.util, "find_spec", lambda name, *a: None if name == "submitit"
                        else real(name, *a))
    assert cli.main([str(tmp_path / "zoo"), "--executor", "submitit-local"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --executor submitit-local: needs submitit (pip install 'wdiv[slurm]')"]
    assert not list((tmp_path / "zoo").rglob("spectra*"))


def test_the_population_table_of_an_in_process_run(tmp_path, monkeypatch, capsys):
    zoo = _zoo(tmp_path / "zoo", n=5)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["zoo", "--summary", "out/population.csv", "-q"]) == 1
    table = _assert_population(tmp_path / "out" / "population.csv", zoo, ["m0", "m1", "m2", "m4"],
                               {BROKEN: BROKEN_LINE})
    assert list(table.reset_index().columns[:6]) == ["path", "status", "error", "sha256", "n_layers", "n_failed"]
    # a rewrite hashes only the checkpoints whose record changed since the previous table
    hashed = []
    real = population.checkpoint_sha256
    monkeypatch.setattr(population, "checkpoint_sha256", lambda p: hashed.append(p) or real(p))
    assert cli.main(["zoo", "--summary", "out/population.csv", "-q"]) == 1
    assert hashed == [Path("zoo/m3/model.safetensors")]  # the failed one: it has no record to vouch for it
    hashed.clear()
    assert cli.main(["zoo", "--summary", "out/population.csv", "--fit", "hill", "-q"]) == 1  # every record new
    assert len(hashed) == 5
    _assert_population(tmp_path / "out" / "population.csv", zoo, ["m0", "m1", "m2", "m4"], {BROKEN: BROKEN_LINE})


def test_a_damaged_missing_or_stale_checkpoint_is_a_row_with_its_reason(tmp_path, monkeypatch):
    zoo = _zoo(tmp_path / "zoo", n=3)
    _weights(zoo / "m3" / "model.safetensors", 3)
    _weights(zoo / "m4" / "model.safetensors", 4)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["zoo/m0", "zoo/m1", "zoo/m3", "-q"]) == 0
    (zoo / "m1" / "spectra.csv").write_text("layer_id\n")
    os.utime(zoo / "m3" / "model.safetensors", ns=(1, 1))  # the weights changed since their analysis
    targets = cli.discover(["zoo"])
    opts = analysis_args.check_args(analysis_args.build_parser().parse_args(["zoo"]))
    df = population.write_population("p.csv", targets, opts, Path("zoo")).set_index("path")
    assert list(df["status"]) == ["ok", "damaged", "missing", "stale", "missing"]
    assert df.loc["m1/model.safetensors", "error"].startswith("zoo/m1/spectra.csv: ")
    assert df.loc["m2/model.safetensors", "error"] == "not analysed yet"
    assert df.loc["m3/model.safetensors", "error"] == "the weights changed since"
    assert df.loc["m0/model.safetensors", "alpha"] == record_alpha(zoo / "m0")
    assert df.loc[["m1/model.safetensors", "m3/model.safetensors"], "alpha"].isna().all()


def record_alpha(folder: Path) -> float:
    return json.loads((folder / "spectra_summary.json").read_text())["alpha"]


def test_discovery_never_takes_the_jobs_folder_for_checkpoints(tmp_path):
    zoo = _zoo(tmp_path / "zoo", n=2)
    _weights(zoo / JOBS_FOLDER / "old" / "model.safetensors", 9)
    assert [t.weights for t in cli.discover([str(zoo)])] == [zoo / "m0" / "model.safetensors",
                                                           zoo / "m1" / "model.safetensors"]


@pytest.mark.slow  # subprocesses that import torch, and a clean run to compare with: ~1 min on the 2-core box
def test_a_killed_population_analysis_resumes_without_redoing_finished_checkpoints(tmp_path):
    zoo = _zoo(tmp_path / "zoo", n=8, rows=300)
    shutil.rmtree(zoo / BROKEN)
    shutil.copytree(zoo, tmp_path / "clean")
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    assert subprocess.run([sys.executable, "-m", "wdiv.analyze", "clean", "-q"], cwd=tmp_path, env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "wdiv.analyze", "zoo", "--executor", "submitit-local",
                             "--per-job", "2", "-q"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(zoo.glob("*/spectra_summary.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and every job it started
    proc.wait()
    finished = [p.parent.name for p in zoo.glob("*/spectra_summary.json") if read_record(p)[0] is not None]
    assert finished  # the kill came after at least one record
    if len(finished) == 7:
        pytest.skip("every checkpoint was done before the kill (machine too fast for this check)")
    stamps = _stamps(zoo, finished)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli.main(["zoo", "--executor", "submitit-local", "--per-job", "2", "-q"]) == 0
    finally:
        os.chdir(cwd)
    assert _stamps(zoo, finished) == stamps
    for name in [p.name for p in zoo.iterdir() if p.name != JOBS_FOLDER]:
        assert (zoo / name / "spectra.csv").read_bytes() == (tmp_path / "clean" / name / "spectra.csv").read_bytes()


def test_slurm_options_reach_the_sbatch_script_of_one_job_array(tmp_path, monkeypatch, capsys):
    """A stand-in sbatch keeps the script submitit hands it: the options are SLURM's, one array."""
    zoo = _zoo(tmp_path / "zoo", n=5)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # named in the script, never run here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["zoo", "--executor", "slurm", "--partition", "cpu", "--time", "120", "--cpus", "8", "--mem", "32",
                     "--per-job", "2", "--max-parallel", "2", "--no-wait"]) == 0
    out = capsys.readouterr().out.strip()
    (folder,) = (zoo / JOBS_FOLDER).iterdir()
    assert out == (f"wdiv.analyze: 5 checkpoint(s) in 3 job(s): 4242_0 4242_1 4242_2; "
                   f"logs in {folder.relative_to(tmp_path)}; the same command without --no-wait collects them")
    script = (tmp_path / "submitted.sh").read_text().splitlines()
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=120", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --array=0-2%2", "#SBATCH --job-name=wdiv-analyze"):
        assert line in script
    assert len(list(folder.glob("4242_*_submitted.pkl"))) == 3  # one chunk pickled per array task
    assert not list(zoo.rglob("spectra*"))  # nothing ran here


def test_a_refused_submission_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    _zoo(tmp_path / "zoo", n=2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["zoo", "--executor", "slurm", "--partition", "nope", "--summary", "p.csv"]) == 2
    err = capsys.readouterr().err  # sbatch's own stderr, if it reaches ours, then one line of wdiv's
    assert _errors(err) == ["error: --executor slurm: the job array was not submitted "
                            "(sbatch: error: invalid partition specified: nope)"]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("spectra*")) and not (tmp_path / "p.csv").exists()


def test_chunks_keep_targets_that_share_a_reference_together():
    """Six runs on two references, three a job: each job holds one reference (analysed once there)."""
    from wdiv.analysis_executor import split
    from wdiv.analysis_outputs import Target

    targets = [Target(Path(f"r{i}/model.safetensors"), Path(f"r{i}/spectra.csv"), Path(f"r{i}/spectra_summary.json"),
                      base=Path("a" if i % 2 else "b")) for i in range(6)]
    chunks = split(targets, 3)
    assert [{t.base for t in chunk} for chunk in chunks] == [{Path("a")}, {Path("b")}]
    assert sorted(str(t.weights) for chunk in chunks for t in chunk) == sorted(str(t.weights) for t in targets)


def _stand_in_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch that keeps the script submitit hands it (submitted.sh) and answers job 4242; srun never runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_gpu_jobs_are_submitted_from_a_login_node_without_cuda(tmp_path, monkeypatch, capsys):
    """--device cuda is the jobs' to check: the submitting node has no GPU; --gpus reaches sbatch."""
    zoo = _zoo(tmp_path / "zoo", n=3)
    script = _stand_in_slurm(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a login node, whatever this machine is
    monkeypatch.chdir(tmp_path)
    assert cli.main(["zoo", "--executor", "slurm", "--device", "cuda", "--gpus", "2", "--per-job", "1",
                     "--no-wait"]) == 0
    assert capsys.readouterr().out.startswith("wdiv.analyze: 3 checkpoint(s) in 3 job(s): 4242_0 4242_1 4242_2;")
    lines = script.read_text().splitlines()
    assert "#SBATCH --gpus-per-node=2" in lines and "#SBATCH --array=0-2%3" in lines  # per job of the array
    assert _gpu_lines(lines) == ["#SBATCH --gpus-per-node=2"]
    assert not list(zoo.rglob("spectra*"))
    # without --gpus, no GPU line: SLURM's default
    assert cli.main(["zoo", "--executor", "slurm", "--device", "cuda", "--no-wait"]) == 0
    assert _gpu_lines(script.read_text().splitlines()) == []


def _gpu_lines(script: list[str]) -> list[str]:
    return [line for line in script if line.startswith(("#SBATCH --gpu", "#SBATCH --gres"))]


@pytest.mark.parametrize("extra,line", [
    (["--gpus", "2"], "--gpus: needs --executor slurm"),
    (["--executor", "submitit-local", "--device", "cuda", "--gpus", "1"], "--gpus: needs --executor slurm"),
    (["--executor", "slurm", "--device", "cuda", "--gpus", "0"], "--gpus: must be > 0, got 0"),
    (["--executor", "slurm", "--gpus", "1"], "--gpus: the analysis would run on the CPU: add --device cuda"),
])
def test_a_bad_gpus_option_is_one_line_exit_2(tmp_path, monkeypatch, capsys, extra, line):
    _zoo(tmp_path / "zoo", n=1)
    _stand_in_slurm(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    try:
        code = cli.main(["zoo", *extra])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {line}"]
    assert sorted(tmp_path.rglob("*")) == before


def test_a_job_whose_node_has_no_cuda_fails_each_checkpoint_with_one_line(tmp_path, monkeypatch, capsys):
    """submitit-local jobs see the command's CUDA_VISIBLE_DEVICES (-1: no device, on any machine)."""
    zoo = _zoo(tmp_path / "zoo", n=3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["zoo", "--executor", "submitit-local", "--device", "cuda", "--per-job", "2"]) == 1
    err = capsys.readouterr().err
    why = (f"not analysed: --device: cuda asked for, but CUDA is not available on the job's node "
           f"{socket.gethostname()} (CUDA_VISIBLE_DEVICES=-1)")
    assert _errors(err) == [f"error: zoo/m{i}/model.safetensors: {why}" for i in range(3)]
    (folder,) = (zoo / JOBS_FOLDER).iterdir()
    assert err.splitlines()[-1] == ("wdiv.analyze: 0 analysed, 0 up to date, 3 failed "
                                    f"(job logs: {folder.relative_to(tmp_path)})")
    logs = [p.read_text() for p in folder.glob("*_log.*")]
    assert len(logs) == 4 and not any("Traceback" in text for text in logs)
    assert not list(zoo.rglob("spectra*"))


def _reference_lines(folder: Path, ref: str) -> tuple[int, int]:
    """(jobs that analysed the reference, jobs that read it) as the jobs' logs say."""
    text = "".join(p.read_text() for p in folder.glob("*_log.err"))
    return text.count(f"reference {ref}: analysed, kept in "), text.count(f"reference {ref}: read from ")


def _same_outputs(a: Path, b: Path, names) -> None:
    for name in names:
        files = sorted(p.name for p in (a / name).iterdir() if p.name != "spectra_summary.json")
        assert files == ["esd.npz", "esd_base.npz", "model.safetensors", "spectra.csv", "spectra_base.csv"]
        for f in files:
            assert (a / name / f).read_bytes() == (b / name / f).read_bytes(), f"{name}/{f}"


def test_a_reference_shared_by_three_jobs_is_analysed_once(tmp_path, monkeypatch, capsys):
    names = [f"r{i}" for i in range(6)]
    for i, name in enumerate(names):
        _weights(tmp_path / "zoo" / name / "model.safetensors", i)
    _weights(tmp_path / "ref" / "model.safetensors", 99)
    shutil.copytree(tmp_path / "zoo", tmp_path / "here")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["here", "--base", "ref", "--save-esd", "-q"]) == 0
    assert cli.main(["zoo", "--base", "ref", "--save-esd", "--executor", "submitit-local", "--per-job", "2"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("wdiv.analyze: 6 analysed, 0 up to date, 0 failed")
    (folder,) = (tmp_path / "zoo" / JOBS_FOLDER).iterdir()
    assert len(list(folder.glob("*_result.pkl"))) == 3
    assert _reference_lines(folder, "ref") == (1, 2)
    assert len(list((folder / "references").glob("*.pkl"))) == 1
    _same_outputs(tmp_path / "zoo", tmp_path / "here", names)


def test_a_damaged_kept_reference_is_analysed_again(tmp_path, monkeypatch, capsys):
    for i in range(2):
        _weights(tmp_path / "zoo" / f"r{i}" / "model.safetensors", i)
    _weights(tmp_path / "ref" / "model.safetensors", 99)
    shutil.copytree(tmp_path / "zoo", tmp_path / "here")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["here", "--base", "ref", "--save-esd", "-q"]) == 0
    cmd = ["zoo", "--base", "ref", "--save-esd", "--executor", "submitit-local", "--jobs-folder", "jobs", "-q"]
    assert cli.main(cmd) == 0
    (kept,) = (tmp_path / "jobs" / "references").glob("*.pkl")
    data = bytearray(kept.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the pickle
    kept.write_bytes(bytes(data))
    before = set((tmp_path / "jobs").glob("*_log.err"))
    assert cli.main(cmd + ["--force"]) == 0
    (log,) = set((tmp_path / "jobs").glob("*_log.err")) - before
    text = log.read_text()
    damaged = f"{kept.relative_to(tmp_path)}: damaged (its hash does not match): the reference ref is analysed again"
    assert damaged in text
    assert text.count("reference ref: analysed, kept in ") == 1
    assert kept.read_bytes() != bytes(data)
    _same_outputs(tmp_path / "zoo", tmp_path / "here", ["r0", "r1"])
