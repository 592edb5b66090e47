"""wdiv.train under faults and bad input (issue 12, training side).

Labels follow what was trained; SIGINT/SIGTERM stop cleanly and the same command resumes to the
same weights; a kill -9 anywhere resumes too; damaged resume state and damaged outputs of a
"complete" run are named and redone, never reused; config errors are one stderr line, exit 2,
and leave no run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from wdiv.errors import ConfigError, InputError
from wdiv.train import CONFIG_DIR

TINY = ["model=vit_micro", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false"]
EPOCHS = 8  # long enough (~0.3 s an epoch) for a signal sent after epoch 1 to land mid-run
BASE = ["+exp=baseline", *TINY, f"trainer.epochs={EPOCHS}", "seed=0"]
RUN = Path("baseline") / "default" / "seed0"


def compose_cfg(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def run_inprocess(out_dir: Path, *overrides: str) -> dict:
    from wdiv.training.runner import run

    return run(compose_cfg(*overrides), out_dir)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wdiv.train", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared (rc {proc.poll()})"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / RUN
    info = run_inprocess(out, *BASE)
    assert info["status"] == "complete"
    return out


# ------------------------------------------------------------------ labels (item 5)

# (exp, the arm's knob overridden on its own, a level of the grid other than the default)
KNOB_OVERRIDES = [
    ("dropout", "model.dropout=0.5", "0.5"),
    ("weight_decay", "optim.weight_decay=0.0005", "0.0005"),
    ("augment", "aug.policy=augmix", "augmix"),
    ("synthetic", "synth.p=0.3", "0.3"),
]


@pytest.mark.parametrize("exp, override, level", KNOB_OVERRIDES)
def test_overriding_the_arms_knob_alone_is_refused_naming_level(exp, override, level):
    from wdiv.training.validate import validate

    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(f"+exp={exp}", *TINY, override))
    key = override.split("=")[0]
    message = str(err.value)
    assert message.startswith(f"{key}=") and "disagrees with level=" in message and f"set level={level} instead" in message
    assert "\n" not in message


@pytest.mark.parametrize("exp, override, level", KNOB_OVERRIDES)
def test_level_labels_the_dir_run_json_and_config_alike(exp, override, level):
    from wdiv.training.runner import describe
    from wdiv.training.validate import KNOBS, validate

    cfg = compose_cfg(f"+exp={exp}", *TINY, f"level={level}", hydra=True)
    validate(cfg)  # the same value twice (level and knob) is fine, also spelled out
    validate(compose_cfg(f"+exp={exp}", *TINY, f"level={level}", override))
    knob = OmegaConf.select(cfg, KNOBS[cfg.arm])
    assert str(knob) == level or float(knob) == float(level)
    assert str(describe(cfg)["level"]) == level or float(describe(cfg)["level"]) == float(level)
    tag = Path(str(cfg.hydra.run.dir)).parent.name
    assert level in tag or str(float(level)) in tag, tag


@pytest.mark.parametrize("exp", ["baseline", "paper"])
@pytest.mark.parametrize("override", ["model.dropout=0.5", "optim.weight_decay=0.001", "aug.policy=flip", "synth=offline"])
def test_a_baseline_that_turns_on_an_arms_knob_is_refused(exp, override):
    from wdiv.training.validate import validate

    validate(compose_cfg(f"+exp={exp}", *TINY))
    with pytest.raises(ConfigError, match=r"is the \w+ arm's knob, but this run is labelled arm=baseline"):
        validate(compose_cfg(f"+exp={exp}", *TINY, override))


FIX = Path(__file__).parent / "fixtures" / "text"
TEXT = ["model=tiny_bert", "data=text_csv", f"data.train_file={FIX / 'train.csv'}", f"data.test_file={FIX / 'test.csv'}", "trainer.progress=false"]


def test_every_exp_at_its_own_level_is_accepted_and_other_arms_knobs_are_refused():
    from wdiv.training.validate import validate

    for exp in sorted(p.stem for p in (Path(CONFIG_DIR) / "exp").glob("*.yaml")):
        validate(compose_cfg(f"+exp={exp}", *(TEXT if exp.startswith("text_") else TINY)))
    with pytest.raises(ConfigError, match=r"^aug.policy=flip is the augment arm's knob"):
        validate(compose_cfg("+exp=dropout", *TINY, "aug.policy=flip"))
    with pytest.raises(ConfigError, match=r"^synth.mode=none"):
        validate(compose_cfg("+exp=synthetic", *TINY, "synth=none"))


@pytest.mark.parametrize("exp, override, level", [("text_augment", "aug.policy=ri-0.3-0.5", "ri-0.3-0.5"), ("text_synthetic", "synth.p=0.3", "0.3")])
def test_text_arms_refuse_their_knob_alone_too(exp, override, level):
    from wdiv.training.validate import validate

    validate(compose_cfg(f"+exp={exp}", *TEXT, f"level={level}", override))
    with pytest.raises(ConfigError, match=rf"disagrees with level=.*: set level={level} instead"):
        validate(compose_cfg(f"+exp={exp}", *TEXT, override))


def test_config_error_is_one_stderr_line_exit_2_and_writes_nothing(tmp_path):
    runs = tmp_path / "runs"
    proc = cli("+exp=dropout", "model.dropout=0.5", *TINY, f"paths.runs_dir={runs}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config error: model.dropout=0.5 disagrees with level=0.1: set level=0.5 instead" in lines[0], proc.stderr
    assert not runs.exists() or not any(runs.rglob("*")), list(runs.rglob("*"))  # no run dir, no .hydra, no log


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from wdiv.training.runner import show_progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert show_progress("auto") is False and show_progress(True) is True and show_progress(False) is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress("auto") is True
    assert str(compose_cfg().trainer.progress) == "auto"


# ------------------------------------------------------------------ interrupts (item 6)


# SIGINT resumes through the same CLI command; SIGTERM resumes in-process (the same run()
# the CLI calls), which saves one interpreter start in the fast tier.
@pytest.mark.parametrize("sig, code, resume_cli", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)])
def test_signal_stops_cleanly_and_the_same_command_resumes_to_the_same_weights(sig, code, resume_cli, tmp_path, reference, caplog):
    args = [*BASE, f"paths.runs_dir={tmp_path}"]
    run_dir = tmp_path / RUN
    proc = subprocess.Popen([sys.executable, "-m", "wdiv.train", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    wait_for(run_dir / "checkpoints" / "state.pt", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and out == ""
    stops = [line for line in err.splitlines() if "interrupted" in line]
    assert len(stops) == 1 and stops[0].endswith("; rerun the same command to resume"), err[-2000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and "error" not in info
    after = info["interrupted"]["after_epoch"]
    assert info["interrupted"]["signal"] == sig.name and 1 <= after < EPOCHS
    assert f"interrupted after epoch {after};" in stops[0]
    assert torch.load(run_dir / "checkpoints" / "state.pt", weights_only=True)["epoch"] == after

    if resume_cli:
        again = cli(*args, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"resuming {run_dir} after epoch {after}" in again.stderr
        assert again.stdout.startswith("complete baseline seed 0 | test_acc")  # the result line, on stdout
    else:
        with caplog.at_level(logging.INFO, logger="wdiv.training.runner"):
            run_inprocess(run_dir, *args)
        assert any(f"resuming {run_dir} after epoch {after}" in r.getMessage() for r in caplog.records)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and "interrupted" not in info
    assert info["metrics"] == json.loads((reference / "run.json").read_text())["metrics"]
    assert_same_weights(reference / "model.safetensors", run_dir / "model.safetensors")
    assert len((run_dir / "history.csv").read_text().splitlines()) == EPOCHS + 1


def test_interrupt_in_process_marks_run_json_and_resumes(tmp_path, reference, monkeypatch):
    """The runner's side without a subprocess: a stop flag raised during epoch 3."""
    from wdiv.training import interrupts, loop

    calls = {"n": 0}
    real = loop.train_epoch

    def flag_in_third_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            monkeypatch.setattr(interrupts, "_requested", signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_epoch", flag_in_third_epoch)
    with pytest.raises(interrupts.Interrupted) as stop:
        run_inprocess(tmp_path, *BASE)
    assert stop.value.epoch == 2 and stop.value.exit_code == 143
    assert json.loads((tmp_path / "run.json").read_text())["interrupted"] == {"signal": "SIGTERM", "after_epoch": 2}
    monkeypatch.setattr(interrupts, "_requested", None)
    monkeypatch.setattr(loop, "train_epoch", real)
    assert run_inprocess(tmp_path, *BASE)["status"] == "complete"
    assert_same_weights(reference / "model.safetensors", tmp_path / "model.safetensors")


# ------------------------------------------------------------------ damaged resume state


def _stopped_after_one_epoch(out: Path) -> None:
    info = run_inprocess(out, *BASE, "trainer.stop_after_epoch=1")
    assert info["status"] == "running" and (out / "checkpoints" / "state.pt").exists()


@pytest.mark.parametrize("damage", ["truncate_state", "garbage_state", "garbage_weights", "delete_weights"])
def test_damaged_resume_state_is_named_in_one_line(damage, tmp_path):
    _stopped_after_one_epoch(tmp_path)
    ckpt = tmp_path / "checkpoints"
    state, (weights,) = ckpt / "state.pt", list(ckpt.glob("epoch*.safetensors"))
    if damage == "truncate_state":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "garbage_state":
        state.write_bytes(os.urandom(4000))
    elif damage == "garbage_weights":
        weights.write_bytes(b"\x00" * 8 + os.urandom(1000))
    else:
        weights.unlink()
    named = state if "state" in damage else weights
    with pytest.raises(InputError) as err:
        run_inprocess(tmp_path, *BASE)
    message = str(err.value)
    assert str(named) in message and "trainer.resume=false starts over" in message and "\n" not in message
    if damage == "truncate_state":
        assert run_inprocess(tmp_path, *BASE, "trainer.resume=false")["status"] == "complete"  # the way out it names


def test_damaged_resume_state_through_the_cli_exits_2_without_traceback(tmp_path):
    _stopped_after_one_epoch(tmp_path / RUN)
    (tmp_path / RUN / "checkpoints" / "state.pt").write_bytes(b"not a checkpoint")
    proc = cli(*BASE, f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "checkpoints/state.pt" in errors[0] and "trainer.resume=false starts over" in errors[0], proc.stderr
    assert json.loads((tmp_path / RUN / "run.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------ outputs prove themselves (item 1)


def test_run_json_records_the_weights_it_wrote(reference):
    from wdiv import records

    info = json.loads((reference / "run.json").read_text())
    entry = info["files"]["model.safetensors"]
    assert entry == records.describe(reference / "model.safetensors")
    assert entry["tensors"] == len(load_file(str(reference / "model.safetensors")))
    assert records.check(reference / "model.safetensors", entry) is None
    assert info["files"]["history.csv"]["rows"] == EPOCHS


def test_from_scratch_run_records_its_initial_weights(tmp_path):
    from wdiv import records

    info = run_inprocess(tmp_path, "+exp=baseline", *TINY, "model.pretrained=none")
    for name in ("model.safetensors", "initial.safetensors"):
        assert records.check(tmp_path / name, info["files"][name]) is None
    assert info["files"]["initial.safetensors"]["sha256"] == info["pretrained"]["sha256"]
    (tmp_path / "initial.safetensors").write_bytes(b"garbage")
    again = run_inprocess(tmp_path, "+exp=baseline", *TINY, "model.pretrained=none")
    assert again["files"]["initial.safetensors"] == info["files"]["initial.safetensors"]  # the seed's init, rewritten


@pytest.mark.parametrize("damage, reason", [("truncate", "truncated"), ("garbage", "not a safetensors file"), ("delete", "missing"), ("flip", "hash mismatch")])
def test_complete_run_with_damaged_weights_is_redone_not_reused(damage, reason, tmp_path, reference, caplog):
    import shutil

    shutil.copytree(reference, tmp_path / "run")
    run_dir = tmp_path / "run"
    model = run_dir / "model.safetensors"
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        model.write_bytes(os.urandom(len(data)))
    elif damage == "delete":
        model.unlink()
    else:
        model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="wdiv.training.runner"):
        info = run_inprocess(run_dir, *BASE)
    named = [r.getMessage() for r in caplog.records if str(model) in r.getMessage()]
    assert len(named) == 1 and reason in named[0] and "redoing" in named[0], named
    assert info["status"] == "complete"
    assert_same_weights(reference / "model.safetensors", model)
    assert json.loads((run_dir / "run.json").read_text())["files"]["model.safetensors"]["sha256"] == info["files"]["model.safetensors"]["sha256"]


def test_complete_run_is_reused_when_its_record_matches(tmp_path, reference, caplog):
    import shutil

    shutil.copytree(reference, tmp_path / "run")
    before = (tmp_path / "run" / "run.json").read_text()
    with caplog.at_level(logging.INFO, logger="wdiv.training.runner"):
        run_inprocess(tmp_path / "run", *BASE)
    assert any("already complete" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "run.json").read_text() == before


def test_run_json_that_is_not_json_is_named_and_redone(tmp_path, reference, caplog):
    import shutil

    shutil.copytree(reference, tmp_path / "run")
    run_json = tmp_path / "run" / "run.json"
    run_json.write_text('{"status": "compl')
    with caplog.at_level(logging.WARNING, logger="wdiv.training.runner"):
        info = run_inprocess(tmp_path / "run", *BASE)
    named = [r.getMessage() for r in caplog.records if str(run_json) in r.getMessage()]
    assert len(named) == 1 and "not JSON" in named[0]
    assert info["status"] == "complete" and json.loads(run_json.read_text())["status"] == "complete"


def test_config_yaml_that_is_not_yaml_is_named(tmp_path, reference):
    import shutil

    shutil.copytree(reference, tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("model: [unclosed\n  - : :")
    with pytest.raises(InputError, match="config.yaml: not a readable config"):
        run_inprocess(tmp_path / "run", *BASE)


# ------------------------------------------------------------------ slow: kill -9, submitit


@pytest.mark.slow
@pytest.mark.parametrize("draw", [0, 1])
def test_sigkill_at_a_seeded_random_point_then_resume_gives_the_same_weights(draw, tmp_path, reference):
    rng = random.Random(1234 + draw)
    # after the first checkpoint: mid-epoch, mid-checkpoint or mid-eval, and before the end (a fraction of
    # the training time the reference run still had after epoch 1, however fast the loop has become)
    with (reference / "history.csv").open() as f:
        remaining = sum(float(row["epoch_time_s"]) for row in list(csv.DictReader(f))[1:])
    delay = rng.uniform(0.0, 0.9) * remaining
    args = [*BASE, f"paths.runs_dir={tmp_path}"]
    run_dir = tmp_path / RUN
    proc = subprocess.Popen([sys.executable, "-m", "wdiv.train", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    wait_for(run_dir / "checkpoints" / "state.pt", proc)
    time.sleep(delay)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running", "finished before the kill"
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert_same_weights(reference / "model.safetensors", run_dir / "model.safetensors")


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.mark.slow
def test_submitit_local_preemption_requeues_and_resumes(tmp_path, reference):
    """submitit's preemption signal (USR2) on the job: the run stops, submitit requeues it
    (hydra-submitit-launcher's checkpoint resubmits the same job) and the requeued job resumes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", *BASE, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"paths.runs_dir={tmp_path}"]
    run_dir = tmp_path / RUN
    proc = subprocess.Popen([sys.executable, "-m", "wdiv.train", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    wait_for(run_dir / "checkpoints" / "state.pt", proc, timeout=300)
    jobs = [p for p in _descendants(proc.pid) if "submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(jobs) == 1, jobs
    os.kill(jobs[0], signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*_log.err"))
    assert "interrupted after epoch" in logs and "Requeued job" in logs, logs[-3000:]
    assert f"resuming {run_dir} after epoch" in (run_dir / "train.log").read_text()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    assert_same_weights(reference / "model.safetensors", run_dir / "model.safetensors")


# ------------------------------------------------------------------ a bad grid point in a multirun


def test_a_bad_grid_point_fails_alone_and_the_multirun_exits_nonzero(tmp_path):
    """The bad point first: it must not end the multirun before the good one runs."""
    proc = cli("-m", "+exp=dropout", "level=1.5,0.1", *TINY, f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    good = json.loads((tmp_path / "dropout" / "p0.1" / "seed0" / "run.json").read_text())
    assert good["status"] == "complete" and proc.stdout.startswith("complete dropout 0.1 seed 0 |")
    bad = json.loads((tmp_path / "dropout" / "p1.5" / "seed0" / "run.json").read_text())
    assert bad["status"] == "failed" and (bad["arm"], bad["level"]) == ("dropout", 1.5)
    assert bad["error"] == "config error: model.dropout: 1.5 is outside [0.0, 1.0)"
    lines = [line for line in proc.stderr.splitlines() if "model.dropout: 1.5" in line]
    assert lines[0].endswith("config error: model.dropout: 1.5 is outside [0.0, 1.0)") and "Traceback" not in proc.stderr
    assert not (tmp_path / "dropout" / "p1.5" / "seed0" / "model.safetensors").exists()
