"""Cluster readiness: CPU counts from the job's allocation, the builtin cache built once by
concurrent processes (OS and soft locks), run.json's pretrained reference portable across
machines, enum keys refused at compose time, and swept models/datasets in distinct run dirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from wdiv.cpus import available_cpus
from wdiv.errors import InputError
from wdiv.references import pretrained_record, resolve_pretrained
from wdiv.train import CONFIG_DIR


# ------------------------------------------------------------------ CPUs


def test_cpus_come_from_slurm_then_the_affinity_mask():
    assert available_cpus({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert available_cpus({}) == len(os.sched_getaffinity(0))
    for bad in ("", "0", "two", "-1"):  # not a usable count: the affinity mask decides
        assert available_cpus({"SLURM_CPUS_PER_TASK": bad}) == len(os.sched_getaffinity(0))


def test_affinity_restricted_process_sees_its_own_cpu_count():
    """taskset / cgroup cpusets: one allowed CPU is one CPU, whatever os.cpu_count() says."""
    first = sorted(os.sched_getaffinity(0))[0]
    code = f"import os; os.sched_setaffinity(0, {{{first}}}); from wdiv.cpus import available_cpus; print(available_cpus({{}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_library_code_never_asks_the_machine_for_its_cpu_count():
    src = Path(__file__).resolve().parents[1] / "src" / "wdiv"
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py") if "os.cpu_count()" in p.read_text() and p.name != "cpus.py"]
    assert offenders == []


def test_runtime_sizes_threads_and_workers_from_the_cpus_passed_in(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from wdiv.training.runner import runtime

    before = torch.get_num_threads()
    try:
        trainer = OmegaConf.create({"threads": 0, "device": "cpu", "num_workers": "auto", "precision": "auto", "progress": False})
        runtime(trainer, cpus=2)
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        rt = runtime(OmegaConf.merge(trainer, {"device": "cuda", "threads": 1}), cpus=5)
        assert rt.num_workers == 4 and rt.pin_memory and rt.bf16  # one CPU left to the training process
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ the builtin cache, built once

BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from wdiv.train import CONFIG_DIR
    from wdiv.training import pretrained
    from wdiv.training.checkpoint import save_weights
    from wdiv.training.runner import runtime

    out, builds = Path(sys.argv[1]), Path(sys.argv[2])
    def slow_build(cfg, rt, weights):  # stands in for the source-task training: slow enough to overlap
        with open(builds, "a") as f:
            f.write("build\\n")
        time.sleep(1.5)
        import torch
        save_weights({"w": torch.zeros(2)}, weights)
        return {}
    pretrained._pretrain = slow_build
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model=vit_micro", f"paths.cache_dir={out}"])
    (out.parent / f"ready-{sys.argv[3]}").touch()
    while len(list(out.parent.glob("ready-*"))) < 2:  # start both builds together
        time.sleep(0.01)
    print(pretrained.ensure_builtin(cfg, runtime(cfg.trainer, 1)))
    """
)


@pytest.mark.parametrize("soft", [False, True], ids=["os-lock", "soft-lock"])
def test_two_processes_that_need_the_same_builtin_checkpoint_build_it_once(tmp_path, soft):
    cache, builds = tmp_path / "cache", tmp_path / "builds.txt"
    env = {**os.environ, "WDIV_LOCK": "soft" if soft else ""}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(cache), str(builds), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert builds.read_text().splitlines() == ["build"]  # one build; the other process waited and reused it
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1 and Path(paths.pop()).is_file()
    if soft:
        assert list(cache.rglob("*.soft")) == []  # a soft lock is its file: removed when released


def test_a_soft_lock_is_not_held_up_by_the_file_an_os_lock_left(tmp_path, monkeypatch):
    from wdiv import locks

    path = tmp_path / "entry.lock"
    with locks.locked(path):
        pass
    assert path.exists()  # filelock leaves the OS lock's file behind
    monkeypatch.setenv("WDIV_LOCK", "soft")
    monkeypatch.setattr(locks, "SOFT_WAIT_S", 2.0)
    with locks.locked(path):  # would wait SOFT_WAIT_S and raise if it took that file as held
        assert (tmp_path / "entry.lock.soft").exists()
    assert not (tmp_path / "entry.lock.soft").exists()


# ------------------------------------------------------------------ run.json pretrained: portable


def test_cache_checkpoints_are_recorded_relative_to_the_cache_and_found_in_another(tmp_path):
    old_cache = tmp_path / "a" / "cache"
    weights = old_cache / "pretrained" / "vit-digits-1234" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    (weights.parent / "pretrained.json").write_text(json.dumps({"sha256": "abc"}))
    record = pretrained_record(weights, "abc", "builtin", old_cache)
    assert record == {"path": "pretrained/vit-digits-1234/model.safetensors", "relative_to": "cache", "sha256": "abc", "kind": "builtin"}
    assert resolve_pretrained(record, tmp_path / "run", old_cache) == weights
    new_cache = tmp_path / "b" / "other-cache"
    shutil.copytree(old_cache, new_cache)
    shutil.rmtree(old_cache)
    assert resolve_pretrained(record, tmp_path / "run", new_cache) == new_cache / record["path"]
    # another folder name for the same checkpoint (found by sha256), and a wrong one refused
    (new_cache / "pretrained" / "vit-digits-1234").rename(new_cache / "pretrained" / "renamed")
    assert resolve_pretrained(record, tmp_path / "run", new_cache) == new_cache / "pretrained" / "renamed" / "model.safetensors"
    # only another checkpoint under that name (another build, another sha256): named, never used
    (new_cache / "pretrained" / "renamed" / "pretrained.json").write_text(json.dumps({"sha256": "other"}))
    (new_cache / "pretrained" / "renamed").rename(new_cache / "pretrained" / "vit-digits-1234")
    with pytest.raises(InputError, match=r"vit-digits-1234/model.safetensors: holds sha256 other"):
        resolve_pretrained(record, tmp_path / "run", new_cache)
    # nothing there at all: the expected path, for the caller to name as missing
    assert resolve_pretrained({**record, "path": "pretrained/gone/model.safetensors"}, None, new_cache) == new_cache / "pretrained" / "gone" / "model.safetensors"


def test_files_outside_the_cache_stay_absolute_and_scratch_runs_stay_in_their_run_dir(tmp_path):
    outside = tmp_path / "mine.safetensors"
    outside.write_bytes(b"x")
    record = pretrained_record(outside, "s", "file", tmp_path / "cache")
    assert record["path"] == str(outside.resolve()) and "relative_to" not in record
    assert resolve_pretrained(record, tmp_path / "run", tmp_path / "cache") == outside.resolve()
    assert resolve_pretrained({"path": "initial.safetensors", "sha256": "s", "kind": "initial"}, tmp_path / "run") == tmp_path / "run" / "initial.safetensors"


def test_an_older_absolute_cache_path_is_found_by_sha256_in_this_cache(tmp_path):
    cache = tmp_path / "cache"
    weights = cache / "pretrained" / "k" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    (weights.parent / "pretrained.json").write_text(json.dumps({"sha256": "abc"}))
    old = {"path": "/elsewhere/.cache/wdiv/pretrained/k/model.safetensors", "sha256": "abc", "kind": "builtin"}
    assert resolve_pretrained(old, tmp_path, cache) == weights


def test_moved_run_dir_and_cache_still_analyse_against_the_pretrained_checkpoint(tmp_path, monkeypatch):
    """Train with one cache, move the run dir and the cache elsewhere: analyze --base finds it."""
    from wdiv.training.runner import run

    cache_a = tmp_path / "machine-a" / "cache"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+exp=baseline", "model=vit_micro", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false", f"paths.cache_dir={cache_a}"])
    info = run(cfg, tmp_path / "machine-a" / "runs" / "r")
    pre = info["pretrained"]
    assert pre["relative_to"] == "cache" and pre["path"].startswith("pretrained/")
    shutil.move(str(tmp_path / "machine-a" / "runs"), str(tmp_path / "machine-b-runs"))
    shutil.move(str(cache_a), str(tmp_path / "machine-b-cache"))
    run_dir = tmp_path / "machine-b-runs" / "r"
    env = {**os.environ, "WDIV_CACHE": str(tmp_path / "machine-b-cache")}
    proc = subprocess.run([sys.executable, "-m", "wdiv.analyze", str(run_dir), "--base"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "spectra.csv").is_file() and (run_dir / "spectra_base.csv").is_file()


# ------------------------------------------------------------------ compose-time schemas


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.name=bogus", "optim.name"),
        ("optim.schedule=linear", "optim.schedule"),
        ("model.dropout_at=neck", "model.dropout_at"),
        ("trainer.precision=fp16", "trainer.precision"),
        ("synth.mode=sometimes", "synth.mode"),
    ],
)
def test_a_bad_enum_value_fails_at_compose_time_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        _compose("+exp=baseline", override)
    assert key in str(err.value.__cause__) and "expected one of" in str(err.value.__cause__)


@pytest.mark.parametrize("override", ["optim.name=sgd", "optim=adamw", "optim.schedule=constant", "model.dropout_at=both", "trainer.precision=bf16", "synth=offline", "model=tiny_bert", "model=clip_rn50"])
def test_every_accepted_value_still_composes_and_reads_as_its_string(override):
    cfg = _compose(override)
    for key in ("optim.name", "optim.schedule", "trainer.precision", "synth.mode"):
        value = cfg
        for part in key.split("."):
            value = value[part]
        assert str(value) == f"{value}" and isinstance(value, str)
    assert json.dumps({"n": cfg.optim.name}) == json.dumps({"n": str(cfg.optim.name)})


def test_the_cli_prints_one_line_and_exits_2_for_a_compose_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wdiv.train", "+exp=baseline", "optim.name=bogus", f"paths.runs_dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["wdiv.train: config error: optim.name: Invalid value 'bogus', expected one of [adam, adamw, sgd]"]
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ run dirs of swept models / datasets


def test_sweeping_the_model_gives_each_model_its_own_run_dir(tmp_path):
    tiny = ["trainer.epochs=1", "trainer.progress=false", "diversity.compute=false", "model.pretrain.epochs=1", "seed=0"]
    proc = subprocess.run([sys.executable, "-m", "wdiv.train", "-m", "+exp=baseline", "model=vit_micro,cnn_small", *tiny, f"paths.runs_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("run.json"))
    assert dirs == ["baseline/default/model=cnn_small/seed0", "baseline/default/model=vit_micro/seed0"]
    models = {json.loads((tmp_path / d / "run.json").read_text())["model"] for d in dirs}
    assert models == {"vit_micro", "cnn_small"}


def test_only_swept_identity_keys_add_a_run_dir_level():
    from wdiv.train import swept_dir, swept_keys

    assert swept_keys(["-m", "+exp=dropout", "model=vit_micro,cnn_small", "data=digits"]) == ["model"]
    assert swept_keys(["-m", "model=vit_micro", "seed=0,1"]) == []  # a fixed model is no sweep
    assert swept_keys(["model=a,b"]) == []  # not a multirun
    assert swept_keys(["--multirun", "model.name=glob(vit*)", "data=cifar10,cifar100"]) == ["model.name", "data"]
    job = ["+exp=dropout", "model=cnn_small", "data=cifar10", "level=0.1"]
    assert swept_dir(job, None, "model") == "model=cnn_small/"
    assert swept_dir(job, None, "model|data") == "model=cnn_small,data=cifar10/"
    assert swept_dir(job, {"level": "0.1,0.3"}, "") == ""
    assert swept_dir(job, {"data": "cifar10,cifar100"}, "") == "data=cifar10/"  # an exp file's grid
    assert swept_dir(["model.name=org/model"], None, "model.name") == "model.name=org_model/"
